"""Running a program once: the DSPy context of a call, inputs in, outputs and usage out.

Every call runs in the handler's own thread under ``dspy.context``: the
scope's LM (with a timeout that ends no later than the request's deadline),
ChatAdapter, no history (DSPy keeps 10,000 entries per LM, per module and
process-wide otherwise), no global trace, and a usage tracker of its own.
"""

from __future__ import annotations

import contextlib
import threading
import time

from dspy.utils.callback import BaseCallback

from ... import lmcalls
from ...errors import BridgeError, validation_error
from . import build, lms, streaming
from .catalog import PIPELINE
from .classify import program_failure
from .inrequest import CALLBACK, CALLER, CONTEXT, INDEXES, STEP_TRACE, Interrupted
from .state import Program, Scope


class Guard(BaseCallback):
    """A DSPy callback on every LM call and evaluation of one request, in every thread DSPy starts.

    Before each LM call it stops the run if the request was answered; it
    counts LM calls and evaluations, and sends a ``progress`` event (at most
    every ``every_s`` seconds, and after every evaluation) when ``progress``
    is given: ``progress(counters) -> event data or None``.
    """

    def __init__(self, ctx, progress=None, every_s: float = 0.25) -> None:
        self.ctx = ctx
        self.progress = progress
        self.every_s = every_s
        self.counters = {"lm_calls": 0, "evaluations": 0}
        self._lock = threading.Lock()
        self._sent = 0.0

    def on_lm_start(self, call_id, instance, inputs) -> None:
        try:
            self.ctx.check()
        except BridgeError as exc:
            raise Interrupted(exc) from None

    def on_lm_end(self, call_id, outputs, exception=None) -> None:
        self._count("lm_calls", force=False)

    def on_evaluate_end(self, call_id, outputs, exception=None) -> None:
        score = getattr(outputs, "score", None)
        self._count("evaluations", force=True, last_score=score if isinstance(score, (int, float)) else None)

    def _count(self, key: str, force: bool, **extra) -> None:
        with self._lock:
            self.counters[key] += 1
            now = time.monotonic()
            if self.progress is None or (not force and now - self._sent < self.every_s):
                return
            self._sent = now
            counters = {**self.counters, **{k: v for k, v in extra.items() if v is not None}}
        data = self.progress(counters)
        if data is not None:
            self.ctx.emit("progress", data)


@contextlib.contextmanager
def call_context(dspy, lm, adapter=None, guard: Guard | None = None, indexes=None, callback=None, *, steps=None,
                 program_id: str | None = None, context=None):
    """The settings one request runs under, in this thread only (never ``dspy.configure``).

    ``indexes`` (``index_id -> Index``) serves the retrieve step of retrieving programs;
    ``callback`` (the request's ``ctx.callback``) the tools, rewards and metrics the client answers;
    ``steps``, a list, collects a pipeline's steps as they run (``trace: true``); the caller of its LM
    calls (the request bound to this thread, and ``program_id``) reaches every thread DSPy starts, so
    each call is admitted and reported on the request (``metering``); ``context`` (the program's
    ``context_for`` the request) is what the ``forward`` of an exposed class receives.
    """
    caller = lmcalls.current()
    if caller is not None:
        caller = lmcalls.Caller(caller.ctx, program_id)
    with dspy.context(lm=lm, adapter=adapter or dspy.ChatAdapter(), disable_history=True, trace=None,
                      warn_on_type_mismatch=False, callbacks=[guard] if guard is not None else [],
                      **{INDEXES: indexes, CALLBACK: callback, STEP_TRACE: steps, CALLER: caller, CONTEXT: context}):
        try:
            yield
        except Interrupted as exc:
            raise exc.error or BridgeError("cancelled", "interrupted", "the request was answered before its run "
                                           "finished") from None


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


def execute(ctx, dspy, scope: Scope, global_scope: Scope, program: Program, inputs: dict, stream: bool,
            trace: bool = False, lm_options: dict | None = None) -> dict:
    """One run; ``lm_options`` (temperature, max_tokens...) apply to its LM calls only."""
    if trace and program.module_name != PIPELINE:
        raise validation_error("trace_not_applicable", f"args.trace: a trace lists a Pipeline program's steps; "
                               f"{program.program_id!r} is a {program.module_name}", path="args.trace")
    program.check_inputs(inputs)
    config = lms.resolve(scope, global_scope)
    values = program.python_inputs(inputs)
    lm = lms.with_options(lms.for_deadline(config, ctx.remaining()), lm_options)
    adapter = build.adapter(dspy, program.adapter, lm)
    ctx.check()
    usage: dict = {}
    steps: list | None = [] if trace else None
    with call_context(dspy, lm, adapter, indexes=scope_indexes(scope, global_scope), callback=callback_of(ctx),
                      steps=steps, program_id=program.program_id, context=program.context_for(ctx)), \
            tracked(dspy, scope, usage), program_errors(dspy):
        if stream:
            prediction = streaming.run(program.module, values, lambda chunk: ctx.emit("chunk", chunk), ctx.check,
                                       adapter)
        else:
            prediction = program.module(**values)
    outputs = program.outputs_of(prediction)
    result = {"program_id": program.program_id, "outputs": outputs, "usage": usage, "model": config.model}
    retrieved = getattr(prediction, "_portbridge_retrieved", None)
    if retrieved is not None:
        result["retrieved"] = retrieved
    if steps is not None:
        result["trace"] = steps
    return result


def callback_of(ctx):
    """The request's way to call the client back (``ctx.callback``), where the worker offers one."""
    return getattr(ctx, "callback", None)


def scope_indexes(scope: Scope, global_scope: Scope):
    """``index_id -> Index`` for a request of ``scope``: its own index, else the global scope's."""

    def find(index_id: str):
        index = scope.indexes.get(index_id)
        return index if index is not None else global_scope.get_index(index_id)

    return find
