"""One request in flight (``Job``) and the view of it a handler gets (``Context``).

A job gets exactly one final reply. Whoever produces it first (the handler,
the deadline, a cancel, end_session, shutdown) wins through ``Job.finalize``;
everything later is dropped. A handler that cannot be interrupted keeps running
after its request was answered; cooperative handlers poll ``ctx.check()`` or
sleep with ``ctx.wait()`` and stop early.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .errors import BridgeError

if TYPE_CHECKING:
    from .dispatcher import Dispatcher
    from .envelope import Request
    from .registry import Command
    from .sessions import Session


class Job:
    __slots__ = ("request", "command", "codec", "session", "deadline", "state", "interrupted", "_wakeup", "_lock")

    def __init__(self, request: "Request", command: "Command", codec, session: "Session") -> None:
        self.request = request
        self.command = command
        self.codec = codec
        self.session = session
        timeout_ms = request.timeout_ms
        self.deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms is not None else None
        self.state = "queued"  # queued -> running -> done; or queued -> done
        self.interrupted = False  # True once the reply came from outside the handler
        self._wakeup: threading.Event | None = None  # made only for handlers that wait()
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self.state == "done"

    def start(self) -> bool:
        """Mark the job running; False if it was already answered while queued."""
        with self._lock:
            if self.state != "queued":
                return False
            self.state = "running"
            return True

    def finalize(self, external: bool = False) -> str | None:
        """Claim the right to send the final reply. Returns the previous state, or None if taken."""
        with self._lock:
            if self.state == "done":
                return None
            previous, self.state = self.state, "done"
            if external:
                self.interrupted = True
                wakeup = self._wakeup
            else:
                wakeup = None
        if wakeup is not None:
            wakeup.set()
        return previous

    def wait_interrupted(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the job is answered from outside."""
        with self._lock:
            if self.interrupted:
                return True
            if self._wakeup is None:
                self._wakeup = threading.Event()
            wakeup = self._wakeup
        return wakeup.wait(seconds)


class Context:
    """What a handler sees of its request: ``handler(ctx, args) -> result``."""

    __slots__ = ("job", "dispatcher")

    def __init__(self, job: Job, dispatcher: "Dispatcher") -> None:
        self.job = job
        self.dispatcher = dispatcher

    @property
    def request_id(self):
        return self.job.request.id

    @property
    def session(self) -> "Session":
        return self.job.session

    @property
    def session_id(self) -> str | None:
        return self.job.request.session_id

    @property
    def meta(self) -> dict:
        return self.job.request.meta

    @property
    def format(self) -> str:
        return self.job.codec.name

    def emit(self, name: str, data) -> None:
        """Send an event (``chunk``, ``progress``) for this request, unless it was already answered."""
        if not self.job.done:
            self.dispatcher.send_event(self.job, name, data)

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        if self.job.deadline is None:
            return None
        return max(self.job.deadline - time.monotonic(), 0.0)

    def check(self) -> None:
        """Raise if the request was already answered (cancelled, timed out, shutting down)."""
        if self.job.interrupted:
            raise BridgeError("cancelled", "interrupted", "the request was answered before its handler finished")

    def wait(self, seconds: float) -> None:
        """Sleep like a slow call, but stop at once (raising) when the request is answered."""
        if self.job.wait_interrupted(seconds):
            self.check()
