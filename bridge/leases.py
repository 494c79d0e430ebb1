"""Admission leases a worker holds: LM calls it may start without asking its client (protocol 1.3).

A client that admits an LM call may lease more: ``"lease": {"starts": k,
"valid_ms": w, "tokens": t}`` in the ``portbridge.admit`` result lets the
worker start ``k`` further attempts of that model, under the same limits,
within ``w`` ms of the moment it sent the callback event that asked, their
estimated tokens together within ``t`` (PROTOCOL.md section 7.2). Asking costs
a round trip to the client (tens to hundreds of microseconds); a leased start
costs a lock and a comparison.

``Leases`` keeps one lease per model for the whole worker process (every
request and thread shares it): ``take`` consumes a start, ``grant`` replaces
the lease with the one a result carries, ``void`` drops it (a provider's 429).
The expiry is measured from when the worker *asked*, before the client could
have granted, so the worker's window always ends first. Unused starts are
simply lost. The client is untrusted: a lease of another shape is ignored.

Returned tokens: under ``tokens_per_minute`` a client charges each call's
estimate and corrects it by what the call used. For a model whose client
grants leases (so it reads them), a call that used no more than its estimate
gives the rest back here (``give_back``) instead of in an ``lm_call`` event of
its own, and the model's next admission carries it (``take_returned``):
``returned_tokens``, PROTOCOL.md section 7.2. Returned tokens are sent at most
once; a return that never reaches the client only leaves it more careful.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeGuard

MAX_STARTS = 1000  # the protocol's bounds of a lease (admit.schema.json, $defs/lease)
MAX_VALID_MS = 60_000


class _Lease:
    __slots__ = ("limits", "starts", "tokens", "expires")

    def __init__(self, limits: dict, starts: int, tokens: int | None, expires: float) -> None:
        self.limits = limits  # the limits it was granted under: an LM with others asks
        self.starts = starts
        self.tokens = tokens  # None: no bound on the leased calls' estimates
        self.expires = expires


class Leases:
    """The worker's leases, per model; thread-safe. ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Lease] = {}
        self._lessors: set[str] = set()  # models whose client granted a lease (it reads returned_tokens)
        self._returned: dict[str, int] = {}  # tokens given back per model, for its next admission
        self.granted = 0  # starts received in leases, and taken from them (for stats and tests)
        self.taken = 0

    def now(self) -> float:
        return self._clock()

    def take(self, model: str, limits: dict, estimated_tokens: int) -> bool:
        """Consume one leased start for an attempt of ``model`` under ``limits``; False: ask the client."""
        with self._lock:
            lease = self._held.get(model)
            if lease is None:
                return False
            if lease.expires <= self._clock():
                del self._held[model]
                return False
            if lease.limits != limits or (lease.tokens is not None and estimated_tokens > lease.tokens):
                return False
            lease.starts -= 1
            if lease.tokens is not None:
                lease.tokens -= estimated_tokens
            if lease.starts <= 0:
                del self._held[model]
            self.taken += 1
            return True

    def grant(self, model: str, limits: dict, answer: dict, asked: float) -> None:
        """Keep the lease an admission result carries (``asked``: when the worker sent the callback)."""
        lease = answer.get("lease")
        if lease is None or not isinstance(lease, dict):
            return
        starts, valid_ms, tokens = lease.get("starts"), lease.get("valid_ms"), lease.get("tokens")
        if not (_int(starts) and 1 <= starts <= MAX_STARTS and _int(valid_ms) and 1 <= valid_ms <= MAX_VALID_MS):
            return
        if tokens is not None and not (_int(tokens) and tokens >= 0):
            return
        with self._lock:
            self._held[model] = _Lease(limits, starts, tokens, asked + valid_ms / 1000)
            self._lessors.add(model)
            self.granted += starts

    def give_back(self, model: str, tokens: int) -> bool:
        """Keep ``tokens`` charged for a call of ``model`` that it did not use, for the model's next
        admission; False (nothing kept) when its client never granted a lease: report them instead."""
        with self._lock:
            if model not in self._lessors:
                return False
            if tokens > 0:
                self._returned[model] = self._returned.get(model, 0) + tokens
            return True

    def take_returned(self, model: str) -> int:
        """The tokens given back for ``model`` since its last admission (0 if none); they are gone after."""
        with self._lock:
            return self._returned.pop(model, 0)

    def void(self, model: str) -> None:
        """Drop the lease of ``model`` (its provider refused a call: the client must see the next one)."""
        with self._lock:
            self._held.pop(model, None)

    def held(self, model: str) -> int:
        """Starts left in the lease of ``model`` (0 when none, or expired)."""
        with self._lock:
            lease = self._held.get(model)
            return lease.starts if lease is not None and lease.expires > self._clock() else 0

    def describe(self) -> dict:
        """For stats: models with a lease now, starts received in leases and taken from them so far."""
        with self._lock:
            now = self._clock()
            return {"models": sum(lease.expires > now for lease in self._held.values()),
                    "granted": self.granted, "taken": self.taken}


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
