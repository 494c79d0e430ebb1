"""LM calls made for a request: admission before each attempt, the ``lm_call`` event, the bridge's retries.

Framework-agnostic (PROTOCOL.md section 7.2): a backend's LM layer describes
each configured LM with a ``Policy`` (its model string, its ``rate_limit``, the
retries the bridge makes for it) and runs every LM call as a ``Call``:

* ``Call.admit`` before each HTTP attempt of an LM with ``rate_limit``: a
  start from the lease the client granted (``bridge.leases``, protocol 1.3)
  when one is left, else the built-in ``portbridge.admit`` callback on the
  request that makes the call, waiting within that request's budget;
* ``Call.attempt_failed`` after an attempt that failed: the ``lm_call`` event
  with the error (a provider's 429 voids the model's lease), then, for an LM with ``rate_limit``, a pause (the provider's
  ``Retry-After``, else 1, 2, 4... s) and another attempt while retries are
  left and the pause ends before the deadline;
* ``Call.completed`` once the call has its answer: the ``lm_call`` event with
  tokens, cost, time and whether a cache answered.

The request is found where the call runs: the worker binds the request's
context to the handler's thread (``bind``, done by the dispatcher), and a
backend that starts threads of its own carries a ``Caller`` into them (DSPy
does, through its settings). Events go out when the request asked for them
(``notify: ["lm_call"]``), and for an LM with ``rate_limit`` when its client
needs them: after every failed attempt (a 429 pauses the model), and after
every call when the limits count tokens (the real tokens correct the
estimate). A successful call under a request limit alone tells the client
nothing, and its event would cost more than a leased admission. Nor, unless
asked, does one under a token limit that used no more than its estimate, once
the model's client grants leases: the tokens it did not use go back with the
model's next admission (``returned_tokens``, ``bridge.leases``). Other events of
successful calls go with the request's next frame (``Context.emit_soon``: one
write, one wake-up of the client): only failures and under-estimates are urgent
for a limiter.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from .errors import BridgeError, overloaded
from .leases import Leases
from .redaction import scrub_text

ADMIT = "portbridge.admit"  # the built-in callback every 1.2 client answers
EVENT = "lm_call"  # the event's name, and the name a request puts in notify to get it
MAX_PAUSE_S = 30.0  # the longest pause between attempts without a Retry-After
CHARS_PER_TOKEN = 4  # the admission estimate's idea of a token

LEASES = Leases()  # the starts this worker process may make without asking, per model

_bound: contextvars.ContextVar[Any] = contextvars.ContextVar("portbridge_lm_request", default=None)

# bind(ctx) makes ``ctx`` the request LM calls of this thread are made for, and returns the
# token for unbind(token) (the dispatcher does both around every scheduled handler).
bind = _bound.set
unbind = _bound.reset


@dataclass(frozen=True)
class Policy:
    """How the calls of one configured LM are made (kept on the backend's LM object)."""

    model: str
    rate_limit: dict | None = None  # configure_lm's rate_limit, as given
    num_retries: int = 0  # the bridge's own retries (only for an LM with rate_limit: DSPy's are off)


class Caller:
    """The request an LM call is made for (its context) and the program whose run makes it."""

    __slots__ = ("ctx", "program_id")

    def __init__(self, ctx, program_id: str | None = None) -> None:
        self.ctx = ctx
        self.program_id = program_id


def current(carried: Caller | None = None) -> Caller | None:
    """The caller of an LM call now: the one a backend carried into this thread, else the bound request."""
    if carried is not None:
        return carried
    ctx = _bound.get()
    return Caller(ctx) if ctx is not None else None


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """What admission is told a call may use: the prompt's characters / 4, rounded up, plus ``max_tokens``."""
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + (max_tokens or 0)


class Call:
    """One LM call under ``policy`` for ``caller`` (None: no request, e.g. a thread of its own)."""

    __slots__ = ("policy", "caller", "wanted", "reports", "reports_success", "attempt_ns", "failure_reported",
                 "estimated")

    def __init__(self, policy: Policy, caller: Caller | None) -> None:
        self.policy = policy
        self.caller = caller
        self.wanted = wanted = caller is not None and EVENT in caller.ctx.notify
        # Which events go out: failed attempts, and also completed calls (PROTOCOL.md section 7.2).
        self.reports = wanted or (caller is not None and policy.rate_limit is not None)
        self.reports_success = wanted or (caller is not None and "tokens_per_minute" in (policy.rate_limit or ()))
        self.attempt_ns = 0  # time spent in attempts (not in admission waits or pauses)
        self.failure_reported = False  # the call's last failure already went out as an event
        self.estimated = 0  # estimated_tokens admitted for the attempts the next event reports

    @property
    def admitted(self) -> bool:
        """Whether attempts ask for admission (and the bridge, not the framework, retries them)."""
        return self.policy.rate_limit is not None

    @property
    def watched(self) -> bool:
        """Whether the backend must see each attempt (to ask admission, or to report failures)."""
        return self.admitted or self.reports

    def admit(self, estimated_tokens: int) -> None:
        """Let one attempt start (when the LM has ``rate_limit``): on the lease, else asking the client;
        raise if it may not."""
        model, limits = self.policy.model, self.policy.rate_limit
        if limits is None:
            return
        if self.caller is None:
            raise BridgeError("execution", "lm_call_outside_request",
                              f"the LM {model!r} has a rate_limit, and this call is made outside any "
                              "request, so no client can admit it", {"model": model})
        ctx = self.caller.ctx
        # A leased start only for a request still running within its deadline: otherwise asking
        # fails (or waits) as it always did.
        remaining = ctx.remaining()
        if not ctx.cancelled and (remaining is None or remaining > 0) and LEASES.take(model, limits, estimated_tokens):
            self.estimated += estimated_tokens
            return
        args = {"model": model, "limits": limits, "estimated_tokens": estimated_tokens}
        returned = LEASES.take_returned(model)
        if returned:
            args["returned_tokens"] = returned  # (1.3) what calls since the last admission did not use
        asked = LEASES.now()  # before the event goes out: the lease's window starts no later than the client's
        try:
            answer = ctx.callback(ADMIT, args)
        except BridgeError as exc:
            if exc.code == "interrupted":  # the request was answered meanwhile: say so, as every wait does
                raise
            raise BridgeError(exc.category, "admission_refused", f"the client did not admit a call to "
                              f"{self.policy.model!r}: {exc.message}"[:2000], {"model": self.policy.model}) from None
        if not (isinstance(answer, dict) and answer.get("admitted") is True):
            raise overloaded("admission_refused", f"the client did not admit a call to {self.policy.model!r} "
                             f"(it answered {answer!r:.200} instead of {{\"admitted\": true}})",
                             model=self.policy.model)
        LEASES.grant(model, limits, answer, asked)
        self.estimated += estimated_tokens

    def attempt_done(self, started_ns: int) -> None:
        self.attempt_ns += perf_counter_ns() - started_ns

    def attempt_failed(self, error: BridgeError, retryable: bool, retry_after: float | None,
                       started_ns: int, attempt: int) -> bool:
        """Report a failed attempt; True when the caller should make another (after the pause, waited here)."""
        took = perf_counter_ns() - started_ns
        self.attempt_ns += took
        if error.category == "lm_rate_limit" and self.admitted:
            LEASES.void(self.policy.model)  # the provider disagrees: the client must see the next attempt
        self._report(duration_us=took // 1000, error=error, retry_after=retry_after)
        self.failure_reported = True
        if not (self.admitted and retryable and attempt < self.policy.num_retries and self.caller is not None):
            return False
        pause = retry_after if retry_after is not None else min(2.0 ** attempt, MAX_PAUSE_S)
        remaining = self.caller.ctx.remaining()
        if remaining is not None and pause >= remaining:
            return False  # no time for another attempt: this failure is the call's
        if pause > 0:
            self.caller.ctx.wait(pause)  # raises at once if the request is answered meanwhile
        self.failure_reported = False
        return True

    def completed(self, prompt_tokens: int, completion_tokens: int, cost_usd: float | None, cached: bool,
                  total_ns: int) -> None:
        """The call has its answer: report it (its attempts' time, or the whole call's when none was made)."""
        duration_ns = self.attempt_ns if self.attempt_ns else total_ns
        self._report(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost_usd,
                     cached=cached, duration_us=duration_ns // 1000)

    def failed(self, error: BridgeError, retry_after: float | None, total_ns: int) -> None:
        """The call failed without an attempt's event saying so (e.g. before any attempt): report it."""
        if not self.failure_reported:
            self._report(duration_us=(self.attempt_ns or total_ns) // 1000, error=error, retry_after=retry_after)
            self.failure_reported = True

    def _report(self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float | None = None,
                duration_us: int = 0, cached: bool = False, error: BridgeError | None = None,
                retry_after: float | None = None) -> None:
        estimated, self.estimated = self.estimated, 0  # the next event reports the attempts after these
        if self.caller is None or not (self.reports_success if error is None else self.reports):
            return
        # A call that failed, or used more tokens than its admission charged, is news the client's
        # limiter needs at once. One that used less gives the rest back with the model's next
        # admission when its client reads that, and is not reported unless asked; the others may
        # go with the request's next frame (PROTOCOL.md 7.2).
        urgent = error is not None
        if not urgent and "tokens_per_minute" in (self.policy.rate_limit or ()):
            unused = estimated - _count(prompt_tokens) - _count(completion_tokens)
            urgent = unused < 0
            if not urgent and not self.wanted and LEASES.give_back(self.policy.model, unused):
                return
        send = self.caller.ctx.emit if urgent else self.caller.ctx.emit_soon
        send(EVENT, {
            "model": self.policy.model,
            "prompt_tokens": _count(prompt_tokens),
            "completion_tokens": _count(completion_tokens),
            "cost_usd": cost_usd if _price(cost_usd) else None,
            "duration_us": max(int(duration_us), 0),
            "cached": bool(cached),
            "program_id": self.caller.program_id,
            "estimated_tokens": estimated,
            "error": None if error is None else {
                "category": error.category, "code": error.code, "message": scrub_text(error.message[:2000]),
                "retry_after_s": retry_after if _price(retry_after) else None},
        })


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _price(value) -> bool:
    """A usable non-negative finite number (a cost, a Retry-After)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
