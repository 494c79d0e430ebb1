"""``evaluate_program``: a program's score over a labelled devset, as ``dspy.Evaluate`` (after the gate).

The program runs on every example (``num_threads`` at once, through DSPy's
own ParallelExecutor, as ``dspy.Evaluate`` does), the metric scores each
prediction, and the result is DSPy's score (the mean, as a percentage) with
one entry per example: its score, its outputs, or the error it met (an
example that fails scores 0, as ``failure_score`` in DSPy). A ``progress``
event follows every example; cancel and the deadline stop the run before
its next LM call.
"""

from __future__ import annotations

import threading
import time

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from ...errors import BridgeError
from . import build, lms, scoring
from .classify import classify, program_failure
from .running import Guard, call_context, callback_of, program_errors, scope_indexes, tracked
from .state import Program, Scope


def error_of(exc: BaseException) -> dict:
    error = exc if isinstance(exc, BridgeError) else classify(exc) or program_failure(exc)
    return {"category": error.category, "code": error.code, "message": error.message}


def run(ctx, scope: Scope, global_scope: Scope, program: Program, args: dict) -> dict:
    examples = build.examples(dspy, program, args["devset"], "args.devset")
    metric = scoring.resolve(dspy, args["metric"], args.get("metric_fields"), program)
    config = lms.resolve(scope, global_scope)
    lm = lms.for_deadline(config, ctx.remaining())
    total, lock, tally = len(examples), threading.Lock(), {"done": 0, "score": 0.0, "errors": 0}
    started = time.perf_counter()

    def process(example):
        try:
            prediction = program.module(**example.inputs())
            score = float(metric(example, prediction))
        except Exception:
            with lock:
                tally["done"] += 1
                tally["errors"] += 1
            report()
            raise
        with lock:
            tally["done"] += 1
            tally["score"] += score
        report()
        return prediction, score

    def report() -> None:
        with lock:  # sent under the lock, so that events arrive in order of done
            done, score, errors = tally["done"], tally["score"], tally["errors"]
            ctx.emit("progress", {"done": done, "total": total, "errors": errors,
                                  "score": round(100 * score / done, 2)})

    ctx.emit("progress", {"done": 0, "total": total, "errors": 0, "score": 0.0})
    executor = ParallelExecutor(num_threads=args["num_threads"], max_errors=args.get("max_errors", total + 1),
                                disable_progress_bar=True, provide_traceback=False, compare_results=True)
    usage: dict = {}
    with call_context(dspy, lm, build.adapter(dspy, program.adapter, lm), Guard(ctx),
                      scope_indexes(scope, global_scope), callback_of(ctx), program_id=program.program_id,
                      context=program.context_for(ctx)), \
            tracked(dspy, scope, usage), program_errors(dspy):
        outcomes = executor.execute(process, examples)
    results = []
    for i, outcome in enumerate(outcomes):
        if outcome is None:
            error = executor.exceptions_map.get(i)
            entry = {"index": i, "score": 0.0,
                     "error": error_of(error) if error is not None else {"category": "execution",
                                                                          "code": "not_run", "message": "not run"}}
        else:
            prediction, score = outcome
            entry = {"index": i, "score": score}
            if args["return_outputs"]:
                entry["outputs"] = program.outputs_of(prediction)
        results.append(entry)
    mean = sum(r["score"] for r in results) / total
    return {
        "program_id": program.program_id,
        "metric": metric.__name__,
        "score": round(100 * mean, 2),
        "count": total,
        "errors": sum(1 for r in results if "error" in r),
        "results": results,
        "usage": usage,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
