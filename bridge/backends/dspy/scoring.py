"""A metric from data, for ``evaluate_program`` and ``optimize_program`` (imported after the gate).

``metric`` is one of:

* a name from ``metrics.METRICS`` (``"exact_match"``, ``"f1"``...): plain
  Python comparing labelled outputs with the prediction;
* ``{"callback": name}``: the client scores (``agents.metric_grade``);
* ``{"judge": {...}}``: an LM judge declared as data, a signature that grades::

      {"judge": {"signature": {"inputs": {"question": "str", "gold": "str", "answer": "str"},
                               "outputs": {"correct": "bool"}},
                 "instructions": "Is the answer right?",      # optional
                 "module": "ChainOfThought",                   # or Predict (default)
                 "inputs": {"question": "example.question",   # where each judge input comes from
                            "gold": "example.answer", "answer": "prediction.answer"},
                 "score": "correct"}}                          # a bool, int or float output

  The judge runs on the scope's LM, in the same request (its calls count in
  the usage); a bool scores 1 or 0, a number is clipped to [0, 1].

Every metric also returns feedback text for GEPA (``dspy.Prediction(score,
feedback)``) when asked, saying which fields matched.
"""

from __future__ import annotations

import dspy

from ...errors import validation_error
from . import agents, build, metrics, spec
from .inrequest import json_value

SOURCES = ("example", "prediction")
MODULES = ("Predict", "ChainOfThought")


class Metric:
    """``metric(example, prediction, trace=None, pred_name=None, pred_trace=None) -> float``.

    ``grade(example, prediction) -> (score, feedback())``; with ``feedback``
    the metric returns ``dspy.Prediction(score=..., feedback=...)``, the form
    GEPA reads.
    """

    def __init__(self, name: str, grade, threshold: float, feedback: bool = False) -> None:
        self.__name__ = name
        self.grade = grade
        self.threshold = threshold
        self.feedback = feedback

    def __call__(self, example, prediction, trace=None, pred_name=None, pred_trace=None):
        score, explain = self.grade(example, prediction)
        if not self.feedback:
            return score
        return dspy.Prediction(score=score, feedback=explain())


def resolve(dspy, metric, fields: list[str] | None, program, feedback: bool = False) -> Metric:
    if isinstance(metric, str):
        return _named(metric, fields, program, feedback)
    if "callback" in metric:
        name = agents.check_callback_ref(metric, "args.metric")
        # No threshold of its own: DSPy's optimisers then accept any truthy score, as with a Python metric.
        return Metric(name, agents.metric_grade(name), None, feedback)
    return _judge(dspy, metric["judge"], program, feedback)


def _compared(example, fields, outputs) -> list[str]:
    return fields or [k for k in example.labels().keys() if outputs is None or k in outputs]


def _named(name: str, fields, program, feedback: bool) -> Metric:
    outputs = program.output_names()
    compare = metrics.METRICS[name][0]

    def grade(example, prediction):
        pairs = [(k, json_value(example.get(k)), json_value(prediction.get(k)))
                 for k in _compared(example, fields, outputs)]
        scores = [compare(gold, got) for _, gold, got in pairs]

        def explain() -> str:
            return "\n".join(f"{k}: {got!r} {'matches' if s >= 1 else 'does not match'} the expected {gold!r} "
                             f"({name})" for (k, gold, got), s in zip(pairs, scores)) or "no labelled output"

        return (sum(scores) / len(scores) if scores else 0.0), explain

    return Metric(name, grade, metrics.METRICS[name][1], feedback)


def check_judge(doc: dict, program, path: str = "args.metric.judge") -> dict:
    """The judge declaration, checked against its own signature and the program's fields."""
    judge_spec = spec.parse_signature(doc["signature"], doc.get("instructions"))
    module = doc.get("module", "Predict")
    if module not in MODULES:
        raise validation_error("bad_judge", f"{path}.module: one of {list(MODULES)}", path=f"{path}.module")
    sources = doc["inputs"]
    if set(sources) != set(judge_spec["inputs"]):
        raise validation_error("bad_judge", f"{path}.inputs: say where each judge input comes from: "
                               f"{sorted(judge_spec['inputs'])}", path=f"{path}.inputs")
    outputs = program.output_names()  # None: the program's outputs are not known before it runs
    outputs = None if outputs is None else {*outputs, "reasoning"}
    known = {"example": None if outputs is None else set(program.input_names()) | outputs, "prediction": outputs}
    for name, source in sources.items():
        where, _, field = source.partition(".")
        if where not in SOURCES or not field or (known[where] is not None and field not in known[where]):
            raise validation_error("bad_judge", f"{path}.inputs.{name}: 'example.<field>' or "
                                   f"'prediction.<output>' of the program, got {source!r}",
                                   path=f"{path}.inputs.{name}")
    score = doc["score"]
    kind = judge_spec["outputs"].get(score, {}).get("type")
    if kind not in ("bool", "int", "float"):
        raise validation_error("bad_judge", f"{path}.score: a bool, int or float output of the judge",
                               path=f"{path}.score")
    return {"signature": judge_spec, "module": module, "inputs": dict(sources), "score": score}


def _judge(dspy, doc: dict, program, feedback: bool) -> Metric:
    checked = check_judge(doc, program)
    judge = build.module(dspy, checked["module"], checked["signature"])
    score_field = checked["score"]
    outputs = checked["signature"]["outputs"]

    def grade(example, prediction):
        values = {}
        for name, source in checked["inputs"].items():
            where, _, field = source.partition(".")
            value = (example if where == "example" else prediction).get(field)
            values[name] = value if isinstance(value, str) else str(json_value(value))
        verdict = judge(**values)
        value = verdict.get(score_field)
        score = float(value) if isinstance(value, bool) else min(max(float(value or 0), 0.0), 1.0)
        return score, lambda: "; ".join(f"{k}: {json_value(verdict.get(k))}" for k in outputs)

    return Metric("judge", grade, 1.0 if outputs[score_field]["type"] == "bool" else 0.5, feedback)
