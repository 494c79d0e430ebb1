"""What a worker's requests share, assembled in one place, and how a scheduled one runs.

The ``Runtime`` builds the parts every request meets after routing: the
sessions and their stores, the scheduler (bounded handler threads, one lane per
session), the in-flight table (one final reply per request), the timers
(deadlines, session expiry), the callbacks to the client, the counters, and the
output (``replies``). It owns no file descriptor: it is given ``write``.

It runs a scheduled request's handler on a handler thread (``run``), and turns
whatever a handler raised into its one categorised error (``classify``). It is
also what the core's control commands manage the worker through (the ``Control``
interface of ``core_commands``): load, cancel, end_session, shutdown. Handlers
get a ``Context``, never the runtime.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

from . import codecs, lmcalls
from .callbacks import Callbacks
from .context import Context, Services
from .errors import BridgeError
from .inflight import InFlight, Job
from .limits import Limits
from .logs import enter_request, leave_request
from .registry import Registry
from .replies import Replies
from .scheduler import Scheduler
from .sessions import Session, SessionTable
from .stats import Stats
from .timers import Timers

log = logging.getLogger("portbridge.runtime")
SESSION_SWEEP_MAX_S = 30.0  # how often idle sessions are looked for, at most (a quarter of the TTL if less)


class Runtime:
    def __init__(
        self,
        registry: Registry,
        write: Callable[[bytes], None],
        limits: Limits | None = None,
        *,
        fmt: str = "auto",
        debug: bool = False,
        backends: dict | None = None,
        on_shutdown: Callable[[str], None] = lambda reason: None,
        write_frames: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits = limits or Limits()
        self.debug = debug
        self.pinned = None if fmt == "auto" else codecs.get(fmt)  # --format json|msgpack: every frame's
        self.backends = backends if backends is not None else {}  # filled in after ready by the worker
        self.accepting = True
        self._on_shutdown = on_shutdown
        self.stats = Stats()
        self.replies = Replies(write, self.stats, self.pinned or codecs.JSON, write_frames)
        self.timers = Timers()
        self.sessions = SessionTable(limits.session_ttl_s, limits.max_sessions, self._session_closed)
        self.scheduler = Scheduler(limits.max_concurrency, limits.max_queue, self.run)
        self.inflight = InFlight(self.timers, self.scheduler, self.sessions, self.replies.final)
        self.callbacks = Callbacks(self.replies.event_or_raise, limits.max_callbacks)
        self.services = Services(self.replies, self.callbacks, self.sessions.global_session.store)
        self.timers.every(max(min(limits.session_ttl_s / 4, SESSION_SWEEP_MAX_S), 0.05), self.sessions.expire)

    # -- running requests ---------------------------------------------------------------

    def run(self, job: Job) -> None:
        """Run a scheduled job's handler (on a handler thread); the in-flight table sends its reply."""
        if not job.start():
            return
        request, command = job.request, job.command
        ctx = Context(request, job.codec, job.session.store, self.services, job)
        token = enter_request(request)
        bound = lmcalls.bind(ctx)  # LM calls made on this thread are this request's (admission, lm_call)
        try:
            result, error = command.handler(ctx, request.args), None
        except BaseException as exc:  # noqa: BLE001
            if ctx.cancelled:  # answered from outside: what the handler raised then goes nowhere
                log.debug("%s stopped after its request was answered: %r", command.name, exc)
                return
            result, error = None, self.classify(exc, command.name)
        finally:
            lmcalls.unbind(bound)
            leave_request(token)
        self.inflight.finish(job, error, result)

    def classify(self, exc: BaseException, command: str) -> BridgeError:
        """The one categorised error for what a handler raised (logged by its category)."""
        error = self.registry.classify(exc)
        if error.category == "internal":
            log.error("%s failed: %s", command, error.message, exc_info=exc)
        elif error.category not in ("validation", "not_found", "cancelled"):
            log.warning("%s failed: %s/%s: %s", command, error.category, error.code, error.message)
        # A BridgeError raised ``from`` another exception (bridge.sdk's categories of user code)
        # shows where that one came from.
        origin = exc.__cause__ if isinstance(exc, BridgeError) and exc.__cause__ is not None else exc
        if self.debug and not isinstance(origin, BridgeError):
            tb = "".join(traceback.format_exception(type(origin), origin, origin.__traceback__))
            error.details = {**error.details, "traceback": tb[-20000:]}
        return error

    # -- the control interface (core_commands.Control) ------------------------------------

    def load(self) -> dict:
        """How busy the worker is, for stats and health."""
        scheduler = self.scheduler
        return {
            "in_flight": len(self.inflight),  # control requests are never in flight
            "running": scheduler.running,
            "queued": scheduler.queued,
            "threads": scheduler.threads,
            "sessions": len(self.sessions),
            "timers": len(self.timers),
            "callbacks": self.callbacks.describe(),
            "leases": lmcalls.LEASES.describe(),  # admission leases of LMs with rate_limit (1.3)
        }

    def cancel(self, rid: Any) -> str:
        return self.inflight.cancel(rid)

    def end_session(self, session_id: str) -> int:
        """Cancel the session's queued and running requests, then drop the session."""
        self.sessions.get(session_id)  # raises not_found
        cancelled = self.inflight.cancel_session(session_id)
        self.sessions.end(session_id)
        return cancelled

    def shutdown(self, reason: str) -> None:
        self._on_shutdown(reason)

    def _session_closed(self, session: Session, reason: str) -> None:
        for backend in self.backends.values():
            try:
                backend.close_session(session, reason)
            except Exception:
                log.exception("backend %s failed to close session %r", backend.name, session.id)

    # -- shutdown -------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work, then fail the rest; returns how many were failed."""
        failed = self.inflight.drain(grace_s)
        self.scheduler.close()
        self.timers.stop()
        return failed
