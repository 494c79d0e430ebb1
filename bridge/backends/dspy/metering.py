"""Every call of an LM the bridge built: priced, reported, and each HTTP attempt admitted (after the gate).

DSPy 3.4 runs a ``dspy.LM`` call through ``dspy.clients.execution``:
``execute`` (``aexecute`` for ``acall``) makes the call, answering from the
cache or asking ``_engine`` for the engine whose ``complete`` / ``stream`` /
``complete_legacy`` is one HTTP attempt, and prices the answer (the figure
plain DSPy puts in ``lm.history[-1]["cost"]``, which the worker's disabled
history would drop). ``install`` wraps those three functions, for LMs that
carry a ``bridge.lmcalls.Policy`` (``attach``; every LM ``configure_lm``
builds does, and their copies share it); any other LM runs untouched:

* ``execute``: the call is a ``lmcalls.Call`` for the request running it
  (the ``Caller`` that ``running.call_context`` puts in DSPy's settings, which
  DSPy copies into the threads of Evaluate, the optimisers and streaming, or
  else the request bound to the thread); its price goes into the request's
  usage tracker and, when done, out as the ``lm_call`` event.
* ``_engine``: when the call must be watched (an LM with ``rate_limit``, or a
  request that wants ``lm_call`` events), the engine is wrapped so that each
  attempt first asks admission, reports its failure, and (``rate_limit``: DSPy's
  retries are off for such an LM) is retried by the bridge.

Errors the bridge raises inside an attempt (admission refused, the scripted
LM out of answers) come out of DSPy as ``LMUnexpectedError`` raised from them;
``classify`` gives them back their own category.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from time import perf_counter_ns

import dspy
from dspy.clients import execution
from dspy.clients.errors import wrap_error

from ... import lmcalls
from ...errors import BridgeError
from .classify import classify, program_failure
from .inrequest import CALLER

POLICY = "_portbridge_policy"  # the attribute of a dspy.LM that holds its lmcalls.Policy
_call: contextvars.ContextVar[lmcalls.Call | None] = contextvars.ContextVar("portbridge_lm_call", default=None)


def attach(lm, policy: lmcalls.Policy):
    """Mark ``lm`` as the bridge's: its calls are metered (and admitted, with a rate limit)."""
    setattr(lm, POLICY, policy)
    return lm


def install() -> None:
    """Wrap DSPy's execute, aexecute and _engine (once; applied by ``patches``)."""
    if getattr(execution.execute, "portbridge_patched", False):
        return
    original_execute, original_aexecute, original_engine = execution.execute, execution.aexecute, execution._engine

    def execute(lm, call):
        record = _start(lm)
        if record is None:
            return original_execute(lm, call)
        with _running(record, lm) as done:
            return done(original_execute(lm, call))

    async def aexecute(lm, call):
        record = _start(lm)
        if record is None:
            return await original_aexecute(lm, call)
        with _running(record, lm) as done:
            return done(await original_aexecute(lm, call))

    def _engine(lm, call, asynchronous):
        found = original_engine(lm, call, asynchronous)
        record = _call.get()
        if record is None or not record.watched:
            return found
        backend, request, provider = found
        kind = AsyncAttempts if asynchronous else Attempts
        return kind(backend, record, lm, provider, _estimate(call, request)), request, provider

    for fn in (execute, aexecute, _engine):
        fn.portbridge_patched = True
    execution.execute, execution.aexecute, execution._engine = execute, aexecute, _engine


def _start(lm) -> lmcalls.Call | None:
    policy = getattr(lm, POLICY, None)
    if policy is None:
        return None
    return lmcalls.Call(policy, lmcalls.current(dspy.settings.get(CALLER)))


@contextlib.contextmanager
def _running(record: lmcalls.Call, lm):
    """One call in progress: ``record`` is the call its attempts report to; ``done(result)`` accounts for
    the answer (and returns it); a failure is reported unless an attempt's event already did."""
    token, started = _call.set(record), perf_counter_ns()

    def done(result):
        _account(lm, record, result, perf_counter_ns() - started)
        return result

    try:
        yield done
    except Exception as exc:
        error, _, retry_after = _failure(exc, lm)
        record.failed(error, retry_after, perf_counter_ns() - started)
        raise
    finally:
        _call.reset(token)


def _account(lm, record: lmcalls.Call, result, total_ns: int) -> None:
    """A finished call: its price into the request's usage tracker, then its lm_call event."""
    cached = bool(getattr(result, "cache_hit", False))
    cost = None if cached else getattr(result, "cost", None)
    tracker = dspy.settings.usage_tracker
    if not cached and hasattr(tracker, "add_cost"):
        tracker.add_cost(lm.model, cost)
    usage = {} if cached else (getattr(result, "usage", None) or {})
    record.completed(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), cost, cached, total_ns)


def _failure(exc: BaseException, lm, provider=None) -> tuple[BridgeError, bool, float | None]:
    """(the wire error, whether DSPy deems it retryable, the provider's Retry-After in seconds)."""
    if isinstance(exc, BridgeError):
        return exc, False, None
    wrapped = wrap_error(exc, model=lm.model, provider=provider) if isinstance(exc, Exception) else exc
    error = classify(wrapped) or program_failure(wrapped)
    retry_after = getattr(wrapped, "retry_after", None)
    if not (isinstance(retry_after, (int, float)) and math.isfinite(retry_after) and retry_after >= 0):
        retry_after = None
    return error, dspy.is_retryable_lm_error(wrapped), retry_after


def _estimate(call, request) -> int:
    """Admission's token estimate for one attempt of ``call`` (its lm15 Request, or its legacy messages)."""
    if request is not None:
        system = request.system
        chars = len(system) if isinstance(system, str) else sum(len(getattr(p, "text", "") or "") for p in system or ())
        chars += sum(len(m.text or "") for m in request.messages)
        return lmcalls.estimate_tokens(chars, request.config.max_tokens)
    legacy = call.legacy or {}
    chars = sum(len(str(m.get("content") or "")) for m in legacy.get("messages") or () if isinstance(m, dict))
    max_tokens = legacy.get("max_tokens") or legacy.get("max_completion_tokens")
    return lmcalls.estimate_tokens(chars, max_tokens if isinstance(max_tokens, int) else None)


class Attempts:
    """An engine whose attempts are admitted, reported when they fail, and retried by the bridge."""

    def __init__(self, inner, record: lmcalls.Call, lm, provider, tokens: int) -> None:
        self.inner = inner
        self.record = record
        self.lm = lm
        self.provider = provider
        self.tokens = tokens

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def retry(self, exc: BaseException, started_ns: int, attempt: int, may_retry: bool = True) -> bool:
        error, retryable, retry_after = _failure(exc, self.lm, self.provider)
        return self.record.attempt_failed(error, retryable and may_retry, retry_after, started_ns, attempt)

    def run(self, attempt_once):
        attempt = 0
        while True:
            self.record.admit(self.tokens)
            started = perf_counter_ns()
            try:
                result = attempt_once()
            except Exception as exc:
                if self.retry(exc, started, attempt, not _stream_emitted()):
                    attempt += 1
                    continue
                raise
            self.record.attempt_done(started)
            return result

    def complete(self, request):
        return self.run(lambda: self.inner.complete(request))

    def complete_legacy(self, *args, **kwargs):
        return self.run(lambda: self.inner.complete_legacy(*args, **kwargs))

    def stream(self, request):
        attempt = 0
        while True:
            self.record.admit(self.tokens)
            started, sent = perf_counter_ns(), False
            events = self.inner.stream(request)
            try:
                for event in events:
                    sent = True
                    yield event
            except Exception as exc:
                if self.retry(exc, started, attempt, not sent):  # never replay what a listener already saw
                    attempt += 1
                    continue
                raise
            finally:
                getattr(events, "close", lambda: None)()  # also when DSPy closes this stream early
            self.record.attempt_done(started)
            return


class AsyncAttempts(Attempts):
    """The same for DSPy's async engine: admission and pauses wait on a thread, never on the loop."""

    async def _blocking(self, fn, *args):
        return await asyncio.to_thread(fn, *args) if self.record.admitted else fn(*args)

    async def arun(self, attempt_once):
        attempt = 0
        while True:
            await self._blocking(self.record.admit, self.tokens)
            started = perf_counter_ns()
            try:
                result = await attempt_once()
            except Exception as exc:
                if await self._blocking(self.retry, exc, started, attempt, not _stream_emitted()):
                    attempt += 1
                    continue
                raise
            self.record.attempt_done(started)
            return result

    async def complete(self, request):
        return await self.arun(lambda: self.inner.complete(request))

    async def complete_legacy(self, *args, **kwargs):
        return await self.arun(lambda: self.inner.complete_legacy(*args, **kwargs))

    async def stream(self, request):
        attempt = 0
        while True:
            await self._blocking(self.record.admit, self.tokens)
            started, sent = perf_counter_ns(), False
            events = self.inner.stream(request)
            try:
                async for event in events:
                    sent = True
                    yield event
            except Exception as exc:
                if await self._blocking(self.retry, exc, started, attempt, not sent):
                    attempt += 1
                    continue
                raise
            finally:
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()
            self.record.attempt_done(started)
            return


def _stream_emitted() -> bool:
    """Whether DSPy's compatibility path already streamed part of this attempt to a listener."""
    progress = dspy.settings.get("_lm_stream_progress")
    return bool(isinstance(progress, dict) and progress.get("emitted"))
