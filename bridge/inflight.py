"""Requests between acceptance and their final reply: each one's ``Job``, and the ``InFlight`` table.

A job gets exactly one final reply. Whoever produces it first (the handler,
the deadline, a cancel, end_session, shutdown) wins through ``Job.finalize``;
everything later is dropped. A reply produced from outside the handler
records why (``Job.outcome``) and wakes whatever the handler waits on
(``ctx.wait``, ``ctx.callback``), so cooperative handlers stop at once with
that category; a handler that cannot be interrupted keeps running after its
request was answered, and its result is dropped.

``InFlight`` is the table of those jobs: add, finish, expire, cancel, and the
drain at shutdown, which waits for every reply still to be written (control
replies produced on the reading thread included) and fails the rest. It writes
nothing itself: it is given ``answer(codec, request, error, result)``, the
worker's one way to send a final reply (``Replies.final``).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import BridgeError

if TYPE_CHECKING:
    from .envelope import Request
    from .registry import Command
    from .sessions import Session
    from .timers import Timers


class Job:
    __slots__ = ("request", "command", "codec", "session", "deadline", "state", "outcome", "timer",
                 "held", "held_since", "_wakeups", "_lock")

    def __init__(self, request: Request, command: Command, codec: Any, session: Session) -> None:
        self.request = request
        self.command = command
        self.codec = codec
        self.session = session
        timeout_ms = request.timeout_ms
        self.deadline: float | None = time.monotonic() + timeout_ms / 1000 if timeout_ms is not None else None
        self.state = "queued"  # queued -> running -> done; or queued -> done
        self.outcome: BridgeError | None = None  # the error that answered it from outside the handler
        self.timer: list | None = None  # the deadline's timer entry while armed
        # Encoded events waiting for the request's next frame (Context.emit_soon), and since when.
        self.held: list[bytes] = []
        self.held_since = 0.0
        self._wakeups: list[Callable[[], object]] = []  # called when the job is answered from outside
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self.state == "done"

    def hold(self, payload: bytes, most: int, longest_s: float) -> list[bytes] | None:
        """Keep an event for the request's next frame; returns what is held instead (and holds
        nothing more) once ``most`` are held or the first has waited ``longest_s``."""
        with self._lock:
            if self.state == "done":
                return None  # answered meanwhile: too late for its reply, as for any event
            now = time.monotonic()
            if not self.held:
                self.held_since = now
            self.held.append(payload)
            if len(self.held) < most and now - self.held_since < longest_s:
                return None
            held, self.held = self.held, []
            return held

    def take_held(self) -> list[bytes]:
        """The events held so far (none are held after this, until the next ``hold``)."""
        if not self.held:  # the usual case, on every reply's path: no lock taken for nothing
            return []
        with self._lock:
            held, self.held = self.held, []
            return held

    def start(self) -> bool:
        """Mark the job running; False if it was already answered while queued."""
        with self._lock:
            if self.state != "queued":
                return False
            self.state = "running"
            return True

    def finalize(self, outcome: BridgeError | None = None) -> str | None:
        """Claim the right to send the final reply; ``outcome`` when it comes from outside the handler.
        Returns the previous state, or None if the reply was already claimed."""
        with self._lock:
            if self.state == "done":
                return None
            previous, self.state = self.state, "done"
            if outcome is None:
                return previous
            self.outcome = outcome
            wakeups, self._wakeups = self._wakeups, []
        for wake in wakeups:  # before the reply is written: what it abandons is gone when the client reads it
            wake()
        return previous

    def watch(self, wake: Callable[[], object]) -> bool:
        """Call ``wake()`` when the job is answered from outside; False (not watched) if it already was."""
        with self._lock:
            if self.outcome is not None:
                return False
            self._wakeups.append(wake)
            return True

    def unwatch(self, wake: Callable[[], object]) -> None:
        with self._lock:
            if wake in self._wakeups:
                self._wakeups.remove(wake)

    def wait_interrupted(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the job is answered from outside."""
        event = threading.Event()
        if not self.watch(event.set):
            return True
        try:
            return event.wait(seconds)
        finally:
            self.unwatch(event.set)


def interrupted(outcome: BridgeError) -> BridgeError:
    """What a handler's wait, check or callback raises once its request was answered with ``outcome``."""
    return BridgeError(outcome.category, "interrupted",
                       f"the request was answered ({outcome.category}/{outcome.code}) before its handler finished")


class _Scheduler(Protocol):
    def withdraw(self, job: Job) -> bool: ...
    def release_lane(self, job: Job) -> None: ...


class _Sessions(Protocol):
    def release(self, session: Session) -> None: ...


Answer = Callable[..., None]  # (codec, request, error, result, held=[events held for the reply])


class InFlight:
    def __init__(self, timers: Timers, scheduler: _Scheduler, sessions: _Sessions, answer: Answer) -> None:
        self._timers = timers
        self._scheduler = scheduler
        self._sessions = sessions
        self._answer = answer
        self.by_id: dict[Any, Job] = {}  # request id -> job (read it, never change it)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is left to write
        self._unwritten = 0  # jobs whose final reply is not yet written (what drain waits for)
        self.draining = False
        # A control command's reply is being produced on the reading thread. Only that
        # thread sets it, so it needs no lock (a lock costs a tenth of a ping's time).
        self.inline = False

    def __contains__(self, rid: object) -> bool:
        return rid in self.by_id

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, rid: object) -> Job | None:
        return self.by_id.get(rid)

    def jobs(self, session_id: object = ...) -> list[Job]:
        with self._lock:
            jobs = list(self.by_id.values())
        if session_id is ...:
            return jobs
        return [j for j in jobs if j.request.session_id == session_id]

    def add(self, job: Job) -> None:
        """Count a job in (it will be answered exactly once) and arm its deadline."""
        with self._lock:
            self.by_id[job.request.id] = job
            self._unwritten += 1
        if job.deadline is not None:
            timer: list | None = self._timers.at(job.deadline, lambda: self.expire(job))
            with self._lock:
                if not job.done:
                    job.timer, timer = timer, None
            if timer is not None:  # answered meanwhile
                self._timers.cancel(timer)

    def finish(self, job: Job, error: BridgeError | None = None, result: Any = None,
               external: bool = False) -> bool:
        """Send a job's final reply unless one was already sent. True if this call sent it.
        ``external``: the reply comes from outside the handler (``error`` says why)."""
        previous = job.finalize(error if external else None)
        if previous is None:
            return False
        with self._lock:
            self.by_id.pop(job.request.id, None)
            timer, job.timer = job.timer, None
        if timer is not None:
            self._timers.cancel(timer)
        if previous == "queued":
            self._scheduler.withdraw(job)
        self._sessions.release(job.session)
        try:
            self._answer(job.codec, job.request, error, result, held=job.take_held())
        finally:
            with self._lock:
                self._unwritten -= 1
                if self.draining and not self._unwritten:
                    self._idle.notify_all()
        self._scheduler.release_lane(job)  # after the reply: a session's replies stay in order
        return True

    # -- answers from outside the handler -------------------------------------------

    def expire(self, job: Job) -> None:
        limit = job.request.timeout_ms
        self.finish(job, BridgeError(
            "timeout", "deadline_exceeded", f"no result within timeout_ms={limit}", {"timeout_ms": limit}),
            external=True)

    def cancel(self, rid: object, reason: str = "cancelled by the client") -> str:
        """Answer request ``rid`` with ``cancelled``; returns its state before ('unknown' if none)."""
        job = self.by_id.get(rid)
        if job is None:
            return "unknown"
        state = job.state
        sent = self.finish(job, BridgeError("cancelled", "cancelled", reason, {"state": state}), external=True)
        return state if sent else "done"

    def cancel_session(self, session_id: str) -> int:
        """Answer the session's queued and running requests with ``cancelled/session_ended``."""
        return sum(self.finish(job, BridgeError(
            "cancelled", "session_ended", f"session {session_id!r} was ended"), external=True)
            for job in self.jobs(session_id))

    # -- shutdown ---------------------------------------------------------------------

    def notify_idle(self) -> None:
        """The reading thread wrote a control reply (``inline`` is False again) during a drain."""
        with self._idle:
            self._idle.notify_all()

    def _written(self) -> bool:
        return not self._unwritten and not self.inline

    def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work, then fail the rest; returns how many were failed."""
        with self._idle:
            self.draining = True
            self._idle.wait_for(self._written, timeout=grace_s)
        failed = sum(self.finish(job, BridgeError(
            "shutdown", "shutting_down", f"the worker shut down before the request finished (grace {grace_s} s)"),
            external=True) for job in self.jobs())
        # A handler may have claimed its reply just before: let that write land too.
        with self._idle:
            self._idle.wait_for(self._written, timeout=1.0)
        return failed
