"""DSPy's own saved state (``module.save("x.json")``) loaded into a worker's program with ``import_program``.

Each case optimises a program in plain DSPy in this process, against the
loopback server, saves it with ``module.save`` as a DSPy user does, and loads
the file's JSON into the same program declared on a real worker. Then both
answer new questions: the worker must send the server exactly the requests
the optimised plain-DSPy module sends, and return what it returns. A state
of another structure, which DSPy's ``load_state`` would take silently, is a
``validation`` error naming what differs.
"""

from __future__ import annotations

import json

import dspy
import pytest

from tests.support.dspy_workers import error_of, module_server, module_worker
from tests.test_dspy_parity import KEY, TRAIN, bodies, exact, plain_lm
from tests.test_dspy_pipeline_parity import TRIAGE, Triage

MODEL = "parity-opt"  # the loopback server's answers to TRAIN's odd questions are their labels
QUESTIONS = ["Question 1?", "Question 9?"]


server = module_server(api_key=KEY)
worker = module_worker("dspy-interop")


def trainset():
    return [dspy.Example(**e).with_inputs("question") for e in TRAIN]


CASES = {
    "chain-of-thought, BootstrapFewShot": (
        lambda: dspy.ChainOfThought("question -> answer"), {"signature": "question -> answer",
                                                           "module": "ChainOfThought"},
        lambda lm: dspy.teleprompt.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2, max_labeled_demos=2)),
    "predict, COPRO (new instructions and a new prefix)": (
        lambda: dspy.Predict("question -> answer"), {"signature": "question -> answer"},
        lambda lm: dspy.teleprompt.COPRO(prompt_model=lm, metric=exact, breadth=2, depth=1)),
    "pipeline of two modules, BootstrapFewShot": (
        Triage, TRIAGE,
        lambda lm: dspy.teleprompt.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2, max_labeled_demos=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_state_saved_by_plain_dspy_makes_the_worker_send_what_the_optimised_module_sends(worker, server,
                                                                                         tmp_path, case):
    make, create, optimizer = CASES[case]
    lm = plain_lm(server, MODEL)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = optimizer(lm).compile(make(), trainset=trainset(),
                                         **({"eval_kwargs": {"num_threads": 1}} if "COPRO" in case else {}))
    path = tmp_path / "optimised.json"
    compiled.save(str(path))
    state = json.loads(path.read_text())
    learned = sum(len(p.demos) for _, p in compiled.named_predictors())
    default = make()
    changed = [n for (n, p), (_, d) in zip(compiled.named_predictors(), default.named_predictors())
               if p.signature.instructions != d.signature.instructions]
    assert learned if "COPRO" not in case else changed  # the optimiser did learn something to carry over

    s = f"interop-{len(case)}"
    worker.call("configure_lm", {"model": f"openai/{MODEL}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=s)
    worker.call("create_program", {**create, "program_id": "p"}, session_id=s)
    loaded = worker.call("import_program", {"program_id": "p", "dspy_state": state}, session_id=s)
    assert loaded["demos"] == learned and loaded["dspy_state"]["demos"] == learned
    assert loaded["dspy_state"]["saved_by"]["dspy"] == dspy.__version__ and loaded["dspy_state"]["ignored"] == []
    assert loaded["optimizations"][-1]["imported"] == "dspy_state"

    for question in QUESTIONS:
        start = len(server.seen)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            expected = compiled(question=question)
        plain_requests = bodies(server, start)
        start = len(server.seen)
        result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": question}}, session_id=s)
        assert bodies(server, start) == plain_requests
        assert result["outputs"] == {k: v for k, v in expected.items() if k in result["outputs"]}
        assert result["outputs"]["answer"] == expected.answer


# -- states of another structure: what DSPy's load_state takes silently, refused by name -----------------

def saved(module) -> dict:
    """What ``module.save("x.json")`` writes, without a file (a bare Predict's entry is at the top level)."""
    return json.loads(json.dumps({**module.dump_state(), "metadata": {"dependency_versions": {"dspy": "3.4.1"}}}))


def with_demo(module, **demo):
    module.demos = [dspy.Example(**demo)]
    return module


DESCRIBED = dspy.Signature({"question": (str, dspy.InputField(desc="the user's words")),
                            "answer": (str, dspy.OutputField())})


@pytest.mark.parametrize("create, state, code, path, words", [
    ({"signature": "question -> answer", "module": "ChainOfThought"}, saved(dspy.Predict("question -> answer")),
     "program_mismatch", "args.dspy_state", ["['self']", "['predict']"]),
    ({"signature": "question -> answer"}, saved(dspy.Predict("question, context -> answer")),
     "program_mismatch", "args.dspy_state.signature.fields", ["3 fields", "2"]),
    ({"signature": "question -> answer"}, saved(dspy.Predict("q -> answer")),
     "program_mismatch", "args.dspy_state.signature.fields[0]", ["'q'", "'question'"]),
    ({"signature": "question -> answer"}, saved(dspy.Predict(DESCRIBED)),
     "program_mismatch", "args.dspy_state.signature.fields[0]", ["the user's words"]),
    ({"signature": "question -> answer"}, saved(with_demo(dspy.Predict("question -> answer"), question="q", topic="t")),
     "bad_demo", "args.dspy_state.demos[0].topic", ["topic"]),
    ({"signature": "question -> answer: int"},
     saved(with_demo(dspy.Predict("question -> answer: int"), question="q", answer="seven")),
     "wrong_type", "args.dspy_state.demos[0].answer", ["int"]),
    ({"signature": "question -> answer", "module": "ChainOfThought"},
     {**saved(dspy.ChainOfThought("question -> answer")), "extra.predict": {}},
     "program_mismatch", "args.dspy_state", ["extra.predict"]),
])
def test_a_state_of_another_structure_is_refused_naming_what_differs(worker, create, state, code, path, words):
    s = f"mismatch-{code}-{path}-{len(json.dumps(state))}"
    worker.call("create_program", {**create, "program_id": "p"}, session_id=s)
    before = worker.call("export_program", {"program_id": "p"}, session_id=s)
    err = error_of(worker, "import_program", {"program_id": "p", "dspy_state": state}, session_id=s)
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", code, path), err
    assert all(word in err["message"] for word in words), err["message"]
    assert worker.call("export_program", {"program_id": "p"}, session_id=s) == before  # nothing was kept


def test_an_lm_saved_with_a_predictor_is_ignored_and_the_scope_lm_answers(worker, server):
    s = "interop-lm"
    module = with_demo(dspy.Predict("question -> answer"), question="Question 1?", answer="one")
    module.lm = dspy.LM("openai/elsewhere", api_base="http://127.0.0.1:9/v1", api_key="sk-not-for-you", cache=False)
    state = saved(module)
    assert state["lm"] is not None
    worker.call("configure_lm", {"model": f"openai/{MODEL}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=s)
    loaded = worker.call("import_program", {"program_id": "p", "dspy_state": state}, session_id=s)
    assert loaded["dspy_state"]["ignored"] == ["self.lm"] and loaded["demos"] == 1
    start = len(server.seen)
    worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Question 2?"}}, session_id=s)
    assert [seen.model for seen in server.seen[start:]] == [MODEL]


@pytest.mark.parametrize("args, category, code", [
    ({"program_id": "p", "dspy_state": {}, "program": {}}, "validation", "bad_import"),
    ({"dspy_state": saved(dspy.Predict("question -> answer"))}, "validation", "missing_program_id"),
    ({"program_id": "nope", "dspy_state": saved(dspy.Predict("question -> answer"))}, "not_found", "unknown_program"),
    ({"program_id": "p", "dspy_state": {**saved(dspy.Predict("question -> answer")), "evil": "x"}},
     "validation", "bad_dspy_state"),
    ({"program_id": "p", "dspy_state": {**saved(dspy.Predict("question -> answer")),
                                        "fields": {"answer": {"threshold": 0.5}}}}, "validation", "bad_dspy_state"),
    ({"program_id": "p", "dspy_state": []}, "validation", "validation"),
])
def test_malformed_requests_and_states_are_refused(worker, args, category, code):
    s = f"interop-bad-{code}-{len(json.dumps(args))}"
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=s)
    err = error_of(worker, "import_program", args, session_id=s)
    assert err["category"] == category and (code == "validation" or err["code"] == code), err
