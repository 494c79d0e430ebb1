"""The Python client's admission: a simple per-model pacing limiter answering ``portbridge.admit``.

A worker asks before every HTTP attempt of an LM configured with
``rate_limit`` (PROTOCOL.md section 7.2). ``Pacer.admit`` answers
``{"admitted": true}`` when the attempt may start, after waiting if it must:

* requests: a token bucket per model that fills at ``requests_per_minute / 60``
  per second and holds ``burst`` starts (default 1), so starts are paced, not
  bunched at the top of each minute;
* tokens: a second bucket per model, filled at ``tokens_per_minute / 60`` per
  second and holding a minute's worth, from which each attempt takes its
  ``estimated_tokens`` (the worker's estimate; nothing is reconciled later);
* a provider's 429: ``observe`` reads the ``lm_call`` events of the requests it
  serves, and a ``lm_rate_limit`` error with ``retry_after_s`` pauses that
  model's admissions until then.

Each admission reserves its start at once (first come, first served) and then
waits for it; when that start lies past the callback's ``timeout_ms`` it gives
the reservation back and answers a ``timeout`` error instead of waiting in
vain. One ``Pacer`` serves every request of one ``WorkerClient`` (one process);
the Elixir client's limiter is the one shared across Pythons and nodes.

It answers without a lease (protocol 1.3 lets a client lease a worker the next
calls' starts): every attempt asks, which costs a round trip a developer tool
can afford, and keeps the pacing above exact with no window accounting. The
Elixir client's ``PortBridge.Limiter`` grants leases.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class AdmissionError(Exception):
    """An admission that cannot be given in time; ``category`` goes back as the callback's error."""

    def __init__(self, message: str, category: str = "timeout") -> None:
        super().__init__(message)
        self.category = category


class _Bucket:
    """Tokens that fill at ``rate`` per second up to ``capacity``; a reservation may drive it below zero."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` now; the seconds until the bucket had it (0: at once)."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        self.level -= amount
        return max(0.0, -self.level / self.rate)

    def refund(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class _Model:
    def __init__(self, limits: dict, now: float) -> None:
        self.limits = dict(limits)
        rpm, tpm = limits.get("requests_per_minute"), limits.get("tokens_per_minute")
        self.requests = _Bucket(rpm / 60, limits.get("burst", 1), now) if rpm else None
        self.tokens = _Bucket(tpm / 60, tpm, now) if tpm else None
        self.paused_until = 0.0


class Pacer:
    """Admissions per model, paced to its ``rate_limit``; ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self.admitted = 0
        self.waited_s = 0.0  # time admissions spent waiting, all together

    def admit(self, args: dict, timeout_s: float | None = None) -> dict:
        """Block until one attempt under ``args`` (``{"model", "limits", "estimated_tokens"}``) may start."""
        model, limits = args.get("model"), args.get("limits")
        if not isinstance(model, str) or not isinstance(limits, dict):
            raise AdmissionError("portbridge.admit needs a model and its limits", "validation")
        estimated = args.get("estimated_tokens") or 0
        with self._lock:
            now = self._clock()
            state = self._models.get(model)
            if state is None or state.limits != limits:  # a new configure_lm: its limits from now on
                state = self._models[model] = _Model(limits, now)
            tokens = min(estimated, state.tokens.capacity) if state.tokens else 0
            wait = max(state.paused_until - now, 0.0)
            if state.requests:
                wait = max(wait, state.requests.reserve(1, now))
            if state.tokens:
                wait = max(wait, state.tokens.reserve(tokens, now))
            if timeout_s is not None and wait > timeout_s:
                if state.requests:
                    state.requests.refund(1)
                if state.tokens:
                    state.tokens.refund(tokens)
                raise AdmissionError(f"{model}: the next start allowed by {limits} is {wait:.3f} s away, past the "
                                     f"request's remaining {timeout_s:.3f} s")
            self.admitted += 1
            self.waited_s += wait
        if wait > 0:
            self._sleep(wait)
        return {"admitted": True, "waited_ms": round(wait * 1000, 3)}

    def observe(self, lm_call: object) -> None:
        """An ``lm_call`` event's data: a provider's 429 with Retry-After pauses its model until then."""
        if not isinstance(lm_call, dict) or not isinstance(lm_call.get("model"), str):
            return
        error = lm_call.get("error")
        if not isinstance(error, dict) or error.get("category") != "lm_rate_limit":
            return
        retry_after = error.get("retry_after_s")
        if not isinstance(retry_after, (int, float)) or retry_after <= 0:
            return
        with self._lock:
            state = self._models.get(lm_call["model"])
            if state is not None:
                state.paused_until = max(state.paused_until, self._clock() + retry_after)
