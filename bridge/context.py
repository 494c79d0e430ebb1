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
    """What a handler sees of its request: ``handler(ctx, args) -> result``.

    Scheduled requests have a ``job`` (they can be cancelled, time out, wait);
    control commands run inline on the reading thread with ``job`` None: they
    are answered as soon as they return, so nothing can interrupt them.
    """

    __slots__ = ("request", "session", "codec", "dispatcher", "job")

    def __init__(self, request: "Request", session: "Session", codec, dispatcher: "Dispatcher",
                 job: Job | None = None) -> None:
        self.request = request
        self.session = session
        self.codec = codec
        self.dispatcher = dispatcher
        self.job = job

    @property
    def request_id(self):
        return self.request.id

    @property
    def session_id(self) -> str | None:
        return self.request.session_id

    @property
    def meta(self) -> dict:
        return self.request.meta

    @property
    def format(self) -> str:
        return self.codec.name

    def emit(self, name: str, data) -> None:
        """Send an event (``chunk``, ``progress``) for this request, unless it was already answered."""
        if self.job is None or not self.job.done:
            self.dispatcher.send_event(name, data, self.request.id, self.codec)

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        if self.job is None or self.job.deadline is None:
            return None
        return max(self.job.deadline - time.monotonic(), 0.0)

    def check(self) -> None:
        """Raise if the request was already answered (cancelled, timed out, shutting down)."""
        if self.job is not None and self.job.interrupted:
            raise BridgeError("cancelled", "interrupted", "the request was answered before its handler finished")

    def wait(self, seconds: float) -> None:
        """Sleep like a slow call, but stop at once (raising) when the request is answered."""
        if self.job is None:
            time.sleep(seconds)
        elif self.job.wait_interrupted(seconds):
            self.check()
