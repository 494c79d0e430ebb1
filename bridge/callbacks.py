"""Callbacks: a handler asks the client to run one of its functions, and waits for the answer.

``ctx.callback(name, args)`` sends a ``callback`` event on the request being
handled, ``{"callback_id", "name", "args", "timeout_ms"}``, and blocks until the
client answers with the ``callback_result`` control command (answered on the
reading thread, so an answer gets through however busy the handler threads
are). The call returns the client's ``result``, or raises ``CallbackError`` with
the category the client gave (``execution`` by default): the handler decides
what to do with it, and by default the request fails with that category.

A waiting callback never outlives its request's budget: it is woken, raising,
when the request is answered from outside (cancel, deadline, shutdown: the
category that answered it), when the client can no longer answer (its input
ended or its output broke: ``shutdown``), or when the wait's own bound passes
(``timeout``). At most ``max_callbacks`` wait at once in a worker; one more is
refused with ``overloaded``. Which names a request may call is its backend's
business (the request declares them as data); this module only carries them.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import codecs
from .errors import BridgeError, not_found, overloaded, validation_error
from .inflight import interrupted

if TYPE_CHECKING:
    from .inflight import Job

MAX_NAME_CHARS = 128
DEFAULT_CATEGORY = "execution"  # what a client's error result is, unless it names another
_MISSING = object()

# (name, data, request id, codec) -> None; raises codecs.EncodeError when data cannot be encoded
SendEvent = Callable[[str, Any, Any, Any, list], None]  # (name, data, request id, codec, held frames)


class CallbackError(BridgeError):
    """The client's callback failed; ``category`` is what the client said (``execution`` by default)."""


class _Waiting:
    """One handler waiting for one callback. The gate is a lock held from the start: the handler
    waits by acquiring it, whoever wakes it releases it, once (cheaper than an Event's Condition)."""

    __slots__ = ("name", "gate", "woken", "answered", "result", "error")

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = threading.Lock()
        self.gate.acquire()
        self.woken = False
        self.answered = False
        self.result: Any = None
        self.error: dict | None = None

    def wake(self) -> None:
        """Let the handler go (Callbacks._lock is held: two wakers cannot both release)."""
        if not self.woken:
            self.woken = True
            self.gate.release()

    def wait(self, seconds: float | None) -> None:
        self.gate.acquire(timeout=-1 if seconds is None else max(seconds, 0.0))


class Callbacks:
    """The callbacks in flight in one worker, by callback id."""

    def __init__(self, send: SendEvent, max_callbacks: int) -> None:
        self._send = send
        self.max_callbacks = max_callbacks
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed: str | None = None  # why the client can no longer answer
        self.calls = 0  # callbacks sent to the client
        self.refused = 0  # callbacks refused because max_callbacks were waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def describe(self) -> dict:
        """For stats: waiting now, sent and refused so far."""
        return {"waiting": len(self._waiting), "calls": self.calls, "refused": self.refused}

    def call(self, job: Job | None, name: str, args: dict, timeout: float | None = None) -> Any:
        """Ask the client to run ``name(args)`` for ``job``'s request; its result, or raise."""
        if job is None:
            raise BridgeError("internal", "callback_in_control_command",
                              "a control command runs on the reading thread, which must stay free to read the "
                              "answer: only a scheduled command's handler may call back")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise validation_error("invalid_callback", f"a callback name is a string of 1 to {MAX_NAME_CHARS} "
                                   f"characters, got {name!r:.80}")
        if not isinstance(args, dict):
            raise validation_error("invalid_callback", f"callback {name!r}: args must be a map, "
                                   f"got {type(args).__name__}", callback=name)
        waiting = _Waiting(name)
        with self._lock:
            if self._closed is not None:
                raise self._gone(name)
            if len(self._waiting) >= self.max_callbacks:
                self.refused += 1
                raise overloaded("too_many_callbacks", f"{len(self._waiting)} callbacks already wait for the "
                                 f"client (limit --max-callbacks {self.max_callbacks}); retry later",
                                 callback=name, max_callbacks=self.max_callbacks)
            callback_id = f"cb-{next(self._ids)}"
            self._waiting[callback_id] = waiting
            self.calls += 1
        try:
            return self._wait(job, callback_id, waiting, args, timeout)
        finally:
            with self._lock:
                self._waiting.pop(callback_id, None)  # a later result for it is not_found

    def _wait(self, job: Job, callback_id: str, waiting: _Waiting, args: dict, timeout: float | None) -> Any:
        def abandon() -> None:  # the request was answered from outside: a result now finds nothing
            with self._lock:
                if self._waiting.get(callback_id) is waiting:
                    del self._waiting[callback_id]
                waiting.wake()

        if not job.watch(abandon):  # already answered from outside
            raise _interrupted(job)
        try:
            bound = _bound(job.deadline, timeout)
            if bound is not None and bound <= 0:
                raise self._timed_out(waiting.name, job, timeout)
            data = {"callback_id": callback_id, "name": waiting.name, "args": args,
                    "timeout_ms": None if bound is None else max(int(bound * 1000), 1)}
            try:
                # The request's held events go first, in the same write (Context.emit_soon).
                self._send("callback", data, job.request.id, job.codec, job.take_held())
            except codecs.EncodeError as exc:
                raise BridgeError("serialization", "unencodable_callback_args",
                                  f"callback {waiting.name!r}: its args cannot be sent: {str(exc)[:300]}",
                                  {"callback": waiting.name}) from None
            waiting.wait(bound)
        finally:
            job.unwatch(abandon)
        if waiting.answered:
            if waiting.error is None:
                return waiting.result
            category = waiting.error.get("category", DEFAULT_CATEGORY)
            raise CallbackError(category, "callback_failed",
                                f"callback {waiting.name!r} failed: {waiting.error['message']}"[:2000],
                                {"callback": waiting.name})
        if job.outcome is not None:
            raise _interrupted(job)
        if self._closed is not None:
            raise self._gone(waiting.name)
        raise self._timed_out(waiting.name, job, timeout)

    def answer(self, callback_id: str, result: Any = _MISSING, error: dict | None = None) -> None:
        """The client's answer (``callback_result``): wake the waiting handler, or raise not_found."""
        if (result is _MISSING) == (error is None):
            raise validation_error("invalid_args", "callback_result takes exactly one of args.result and "
                                   "args.error", path="args", reason="oneOf")
        with self._lock:
            waiting = self._waiting.pop(callback_id, None)
            if waiting is None:
                raise not_found("unknown_callback", f"no callback {callback_id!r:.140} is waiting: unknown, "
                                "already answered, or its request is finished", callback_id=callback_id)
            waiting.answered = True
            waiting.result = None if result is _MISSING else result
            waiting.error = error
            waiting.wake()

    def close(self, reason: str) -> None:
        """The client can no longer answer (its input ended, or it stopped reading): wake every waiting
        callback, and refuse new ones."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = reason
            for waiting in self._waiting.values():
                waiting.wake()

    def _gone(self, name: str) -> BridgeError:
        return BridgeError("shutdown", "client_gone", f"callback {name!r} cannot be answered: {self._closed}",
                           {"callback": name})

    @staticmethod
    def _timed_out(name: str, job: Job, timeout: float | None) -> BridgeError:
        limit = job.request.timeout_ms
        why = f"timeout_ms={limit}" if timeout is None else f"{timeout} s (its own bound)"
        return BridgeError("timeout", "callback_timeout", f"callback {name!r} got no answer within {why}",
                           {"callback": name, "timeout_ms": limit})


def _bound(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds a callback may wait: the request's remaining budget, or ``timeout`` if shorter."""
    left = None if deadline is None else deadline - time.monotonic()
    if timeout is None:
        return left
    return timeout if left is None else min(left, timeout)


def _interrupted(job: Job) -> BridgeError:
    assert job.outcome is not None
    return interrupted(job.outcome)
