"""``optimize_program``: few-shot optimisers driven by data (imported after the gate).

``LabeledFewShot`` samples demos from the trainset (no LM call).
``BootstrapFewShot`` runs the program as its own teacher over the trainset,
keeps the runs the named metric accepts as demos, and tops them up with
labelled ones; it makes one LM call per example and round. A ``progress``
event follows every example, and the request's cancel or deadline stops the
run between examples. The optimised program replaces the original, or is
saved beside it under ``save_as``.
"""

from __future__ import annotations

import time

import dspy
from dspy.teleprompt import BootstrapFewShot, LabeledFewShot

from ...errors import validation_error
from . import build, lms, metrics, spec
from .running import call_context, program_errors, tracked
from .state import Program, Scope



class _Reporting(BootstrapFewShot):
    """BootstrapFewShot that reports after every example and stops when the request is answered."""

    def __init__(self, report, **kwargs) -> None:
        super().__init__(**kwargs)
        self._report = report
        self.done = 0
        self.accepted = 0

    def _bootstrap_one_example(self, example, round_idx=0):
        accepted = super()._bootstrap_one_example(example, round_idx)
        self.done += 1
        self.accepted += bool(accepted)
        self._report(self)
        return accepted


def trainset(program: Program, items: list) -> list:
    """Checked ``[{"inputs", "outputs"}]`` -> ``dspy.Example``s with their inputs marked."""
    outputs = build.output_fields(program.module_name, program.spec)  # ChainOfThought may be given reasoning
    examples = []
    for i, item in enumerate(items):
        where = f"args.trainset[{i}]"
        spec.check_inputs(program.spec, item["inputs"], f"{where}.inputs")
        if not item["outputs"]:
            raise validation_error("unlabelled_example", f"{where}.outputs: label at least one output",
                                   path=f"{where}.outputs")
        spec.check_outputs(outputs, item["outputs"], f"{where}.outputs")
        values = build.python_inputs(program, item["inputs"])
        examples.append(dspy.Example(**values, **item["outputs"]).with_inputs(*values))
    return examples


def run(ctx, scope: Scope, global_scope: Scope, program: Program, args: dict) -> dict:
    options = args["options"]
    examples = trainset(program, args["trainset"])
    fields = args.get("metric_fields")
    unknown = sorted(set(fields or ()) - set(program.spec["outputs"]))
    if unknown:
        raise validation_error("unknown_output", f"args.metric_fields: unknown output(s) {unknown}",
                               path="args.metric_fields")
    name, total = args["optimizer"], len(examples)
    student = program.module.deepcopy()
    student._compiled = False  # an optimised program may be optimised again
    usage: dict = {}
    started = time.perf_counter()
    progress = {"optimizer": name, "done": 0, "total": total}
    ctx.emit("progress", progress)
    if name == "LabeledFewShot":
        compiled = LabeledFewShot(k=options.get("k", 16)).compile(student, trainset=examples)
        accepted = 0
    else:
        metric_name = args["metric"]
        threshold = options.get("metric_threshold", metrics.METRICS[metric_name][1])

        def report(optimizer: _Reporting) -> None:
            ctx.check()
            ctx.emit("progress", {**progress, "done": optimizer.done, "bootstrapped": optimizer.accepted,
                                  "errors": optimizer.error_count})

        optimizer = _Reporting(
            report,
            metric=metrics.make(metric_name, fields, list(program.spec["outputs"])),
            metric_threshold=threshold,
            max_bootstrapped_demos=options.get("max_bootstrapped_demos", 4),
            max_labeled_demos=options.get("max_labeled_demos", 16),
            max_rounds=options.get("max_rounds", 1),
            max_errors=options.get("max_errors", 10),
        )
        lm = lms.for_deadline(lms.resolve(scope, global_scope), ctx.remaining())
        with call_context(dspy, lm), tracked(dspy, scope, usage), program_errors(dspy):
            compiled = optimizer.compile(student, trainset=examples)
        accepted = optimizer.accepted
    ctx.check()
    target = args.get("save_as") or program.program_id
    record = {"optimizer": name, "metric": args.get("metric") if name == "BootstrapFewShot" else None,
              "trainset": total, "at": round(time.time(), 3)}
    optimized = Program(target, program.module_name, program.spec, compiled,
                        optimizations=[*program.optimizations, record][-100:])
    scope.put(optimized, replace=target == program.program_id or args["replace"])
    demos = optimized.demo_count()
    ctx.emit("progress", {**progress, "done": total, "demos": demos})
    return {
        "program_id": target,
        "source_program_id": program.program_id,
        "replaced": target == program.program_id,
        "optimizer": name,
        "demos": demos,
        "bootstrapped": accepted,
        "trainset": total,
        "usage": usage,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
