"""Running a program once: the DSPy context of a call, inputs in, outputs and usage out.

Every call runs in the handler's own thread under ``dspy.context``: the
scope's LM (with a timeout that ends no later than the request's deadline),
ChatAdapter, no history (DSPy keeps 10,000 entries per LM, per module and
process-wide otherwise), no global trace, and a usage tracker of its own.
"""

from __future__ import annotations

import contextlib

from ...errors import BridgeError
from . import build, lms, spec
from .classify import program_failure
from .state import Program, Scope


@contextlib.contextmanager
def call_context(dspy, lm, adapter=None):
    """The settings one request runs under, in this thread only (never ``dspy.configure``)."""
    with dspy.context(lm=lm, adapter=adapter or dspy.ChatAdapter(), disable_history=True, trace=None,
                      warn_on_type_mismatch=False):
        yield


@contextlib.contextmanager
def tracked(dspy, scope: Scope, into: dict):
    """Track the usage of the block; it is added to the scope even when the block fails.

    Every LM call is counted, also one whose response carries no ``usage``
    (many OpenAI-compatible servers stream without it): DSPy's own tracker
    keeps only calls that reported tokens.
    """
    tracker = lms.CountingTracker()
    with dspy.context(usage_tracker=tracker):
        try:
            yield
        finally:
            into.update(lms.usage_of(tracker))
            scope.add_usage(into)


@contextlib.contextmanager
def program_errors(dspy):
    """Inside a program run: DSPy and bridge errors pass (the classifier knows them), the rest is 'execution'."""
    try:
        yield
    except (BridgeError, dspy.DSPyError):
        raise
    except Exception as exc:
        raise program_failure(exc) from exc


def execute(ctx, dspy, scope: Scope, global_scope: Scope, program: Program, inputs: dict, stream: bool) -> dict:
    spec.check_inputs(program.spec, inputs)
    config = lms.resolve(scope, global_scope)
    values = build.python_inputs(program, inputs)
    lm = lms.for_deadline(config, ctx.remaining())
    adapter = build.adapter(dspy, program.adapter, lm)
    ctx.check()
    usage: dict = {}
    with call_context(dspy, lm, adapter), tracked(dspy, scope, usage), program_errors(dspy):
        if stream:
            from . import streaming

            prediction = streaming.run(program.module, values, lambda chunk: ctx.emit("chunk", chunk), ctx.check,
                                       adapter)
        else:
            prediction = program.module(**values)
    outputs = {name: build.json_value(value) for name, value in prediction.items()}
    return {"program_id": program.program_id, "outputs": outputs, "usage": usage, "model": config.model}
