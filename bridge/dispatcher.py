"""The protocol half of the worker: payload -> request -> handler -> one final reply.

The dispatcher owns no file descriptor: it is given a ``write(payload: bytes)``
callable and is fed payloads (or bad-frame notices) by the worker loop, so it
can be driven directly in tests. It decides the reply format, checks envelopes
and arguments, runs control commands inline on the reading thread (so ``ping``,
``cancel`` and ``stats`` answer at once under any load), hands every other
request to the scheduler, and guarantees exactly one final reply per request id
whoever produces it: the handler, the deadline, ``cancel``, ``end_session`` or
shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

from . import __version__, codecs, envelope
from .context import Context, Job
from .errors import BridgeError, protocol_error
from .logs import enter_request, leave_request
from .redaction import scrub
from .registry import Registry
from .scheduler import Scheduler
from .sessions import SessionTable
from .stats import Stats
from .timers import Timers

log = logging.getLogger("portbridge.dispatcher")


@dataclass
class Limits:
    max_frame_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 32
    max_queue: int = 1024
    max_sessions: int = 1024
    session_ttl_s: float = 3600.0
    shutdown_grace_s: float = 1.0
    max_frame_values: int = 1024 * 1024


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        write: Callable[[bytes], None],
        *,
        fmt: str = "auto",
        limits: Limits | None = None,
        debug: bool = False,
        backends: dict | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self.debug = debug
        self.backends = backends if backends is not None else {}  # filled in later by the worker
        self.stats = Stats()
        self.timers = Timers()
        self.sessions = SessionTable(self.limits.session_ttl_s, self.limits.max_sessions, self._session_closed)
        self.scheduler = Scheduler(self.limits.max_concurrency, self.limits.max_queue, self.run)
        self.pinned = None if fmt == "auto" else codecs.get(fmt)
        # A value takes at least half a byte (a 1-byte empty map in an array is an element and a
        # container): shorter payloads cannot hold too many and skip the count.
        self._count_values_from = self.limits.max_frame_values // 2
        self.accepting = True
        self.on_shutdown: Callable[[str], None] = lambda reason: None
        self._write = write
        self.last_codec = self.pinned or codecs.JSON
        self._inflight: dict = {}  # request id -> Job
        self._deadlines: dict = {}  # Job -> timer handle
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when _unwritten drops to 0
        self._unwritten = 0  # jobs whose final reply is not yet written (what shutdown waits for)
        self._inline = False  # a control command's reply is being produced on the reading thread
        self._draining = False
        self.timers.every(max(min(self.limits.session_ttl_s / 4, 30.0), 0.05), self.sessions.expire)

    # -- output -------------------------------------------------------------------

    def send(self, codec, doc: dict) -> None:
        self._write_payload(codec.encode(doc))

    def _write_payload(self, payload: bytes) -> None:
        self._write(payload)
        self.stats.frame_out(len(payload))

    def send_event(self, name: str, data, rid=None, codec=None) -> None:
        """An event of request ``rid`` in its format, or a worker-level one (``rid`` None)."""
        codec = codec or self.last_codec
        try:
            self.send(codec, envelope.event(rid, name, data))
        except codecs.EncodeError as exc:
            log.warning("dropped a %r event that cannot be encoded: %s", name, exc)
            return
        self.stats.event(name)

    def ready_data(self) -> dict:
        return {
            "protocol": envelope.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "formats": list(codecs.FORMATS),
            "format": self.pinned.name if self.pinned else "auto",
            "version": __version__,
            # The commands answerable now: the core ones. Backends register just
            # after ready (see worker.py); ``describe`` lists everything.
            "commands": self.registry.names(),
            "limits": self.describe_limits(),
        }

    def describe_limits(self) -> dict:
        lim = self.limits
        return {
            "max_frame_bytes": lim.max_frame_bytes,
            "max_concurrency": lim.max_concurrency,
            "max_queue": lim.max_queue,
            "max_sessions": lim.max_sessions,
            "session_ttl_s": lim.session_ttl_s,
            "shutdown_grace_s": lim.shutdown_grace_s,
            "max_frame_values": lim.max_frame_values,
        }

    # -- input ----------------------------------------------------------------------

    def codec_for(self, payload: bytes):
        if self.pinned is not None:
            return self.pinned
        return codecs.detect(payload)

    def handle_payload(self, payload) -> None:
        """One complete frame payload from the client (bytes, or a memoryview valid during the call)."""
        stats = self.stats
        stats.frames_in += 1  # only this (the reading) thread counts input
        stats.bytes_in += len(payload)
        codec = self.pinned or codecs.BY_FIRST_BYTE[payload[0]]
        if codec is None:
            self.reject(
                protocol_error(
                    "unknown_format",
                    f"first byte 0x{payload[0]:02x} starts neither a JSON object nor a MessagePack map",
                ),
                self.last_codec,
            )
            return
        self.last_codec = codec
        try:
            if len(payload) > self._count_values_from:  # long enough to hold too many values
                request = envelope.parse_request(codec.decode_bounded(payload, self.limits.max_frame_values))
            else:
                request = envelope.parse_request(codec.decode(payload))
        except codecs.TooManyValues as exc:
            rid = envelope.recover_id(bytes(payload[:4096]), codec.name)
            self.reject(protocol_error("too_many_values", str(exc), max_frame_values=exc.limit, format=codec.name),
                        codec, rid)
            return
        except codecs.DecodeError as exc:
            rid = envelope.recover_id(bytes(payload[:4096]), codec.name)
            self.reject(protocol_error("undecodable", str(exc)[:500], format=codec.name), codec, rid)
            return
        except BridgeError as exc:
            self.reject(exc, codec, exc.details.get("id"))
            return
        self.route(request, codec)

    def handle_oversized(self, length: int, head: bytes) -> None:
        self.stats.frame_in(length)
        codec = self.codec_for(head) if head else None
        codec = codec or self.last_codec
        rid = envelope.recover_id(head, codec.name)
        limit = self.limits.max_frame_bytes
        self.reject(
            protocol_error(
                "frame_too_large",
                f"frame of {length} bytes is above the limit of {limit} bytes (--max-frame-bytes); it was skipped",
                frame_bytes=length,
                max_frame_bytes=limit,
            ),
            codec,
            rid,
        )

    def handle_empty(self) -> None:
        self.stats.frame_in(0)
        self.reject(protocol_error("empty_frame", "a frame of length 0 carries no request"), self.last_codec)

    def reject(self, error: BridgeError, codec, rid=None) -> None:
        """A final error reply for a request that never became a job."""
        log.debug("rejected request id=%r: %s %s", rid, error.code, error.message)
        self.stats.reply(None, 0, error.category)
        self._send_final(codec, envelope.failure(rid, self._wire(error)))

    # -- routing --------------------------------------------------------------------

    def route(self, request: envelope.Request, codec) -> None:
        command = self.registry.lookup(request.command)
        if command is None:
            self._reject_request(request, codec, BridgeError(
                "not_found", "unknown_command",
                f"unknown command {request.command!r}; 'describe' lists the commands",
                {"command": request.command},
            ))
            return
        try:
            request.args = command.check(request.args)
        except BridgeError as exc:
            self._reject_request(request, codec, exc)
            return
        # Only this (the reading) thread adds to _inflight: checking, then adding, cannot race.
        if request.id in self._inflight:
            self._reject_request(request, codec, protocol_error(
                "duplicate_id", f"request id {request.id!r} is already in flight", id=request.id))
            return
        if command.control:
            self._run_control(request, command, codec)
            return
        if not self.accepting:
            self._reject_request(request, codec, BridgeError(
                "shutdown", "shutting_down", "the worker is shutting down and takes no new work"))
            return
        try:
            session = self.sessions.acquire(request.session_id)
        except BridgeError as exc:
            self._reject_request(request, codec, exc)
            return
        job = Job(request, command, codec, session)
        with self._lock:
            self._inflight[request.id] = job
            self._unwritten += 1
        if job.deadline is not None:
            handle = self.timers.at(job.deadline, lambda: self.expire(job))
            with self._lock:
                if not job.done:
                    self._deadlines[job] = handle
                    handle = None
            if handle is not None:
                self.timers.cancel(handle)
        try:
            self.scheduler.submit(job)
        except BridgeError as exc:
            self.finish(job, exc)

    def _reject_request(self, request: envelope.Request, codec, error: BridgeError) -> None:
        self.stats.reply(request.command, 0, error.category)
        self._send_final(codec, envelope.failure(request.id, self._wire(error), envelope.reply_meta(request)))

    # -- running ----------------------------------------------------------------------

    def _run_control(self, request: envelope.Request, command, codec) -> None:
        """Control commands run right here, on the reading thread: no queue, no session, no job.
        Nobody else can answer them, so there is nothing to book-keep but the reply."""
        # Shutdown waits for this reply too. Only this thread sets the flag, so it
        # needs no lock (a lock costs ~0.4 us here, a tenth of a ping's time in the worker).
        self._inline = True
        try:
            ctx = Context(request, self.sessions.global_session, codec, self)
            result, error = self._call(command, ctx)
            self._reply(request, codec, error, result, counted=False)
        finally:
            self._inline = False
            if self._draining:
                with self._idle:
                    self._idle.notify_all()

    def run(self, job: Job) -> None:
        """Run a scheduled job's handler (on a scheduler thread)."""
        if not job.start():
            return
        result, error = self._call(job.command, Context(job.request, job.session, job.codec, self, job))
        self.finish(job, error, result)

    def _call(self, command, ctx: Context):
        """The handler's (result, None), or (None, its error): every failure becomes one categorised error."""
        token = enter_request(ctx.request)
        try:
            return command.handler(ctx, ctx.request.args), None
        except BaseException as exc:  # noqa: BLE001
            return None, self._classify(exc, command.name)
        finally:
            leave_request(token)

    def _classify(self, exc: BaseException, command: str) -> BridgeError:
        error = self.registry.classify(exc)
        if error.category == "internal":
            log.error("%s failed: %s", command, error.message, exc_info=exc)
        elif error.category not in ("validation", "not_found", "cancelled"):
            log.warning("%s failed: %s/%s: %s", command, error.category, error.code, error.message)
        if self.debug and not isinstance(exc, BridgeError):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            error.details = {**error.details, "traceback": tb[-20000:]}
        return error

    def finish(self, job: Job, error: BridgeError | None = None, result=None, external: bool = False) -> bool:
        """Send a scheduled job's final reply unless one was already sent. True if this call sent it."""
        previous = job.finalize(external)
        if previous is None:
            return False
        with self._lock:
            self._inflight.pop(job.request.id, None)
            handle = self._deadlines.pop(job, None)
        if handle is not None:
            self.timers.cancel(handle)
        if previous == "queued":
            self.scheduler.withdraw(job)
        self.sessions.release(job.session)
        self._reply(job.request, job.codec, error, result)
        self.scheduler.release_lane(job)
        return True

    def _reply(self, request, codec, error: BridgeError | None, result, counted: bool = True) -> None:
        """Encode and write a final reply; ``counted``: the request is in ``_unwritten``."""
        meta = envelope.reply_meta(request)
        if error is None:
            doc = envelope.success(request.id, result, meta)
        else:
            doc = envelope.failure(request.id, self._wire(error), meta)
        payload, category = self._encode_final(codec, doc)
        # Counted before the write, so that a client reading this reply and
        # asking for stats next sees it.
        self.stats.reply(request.command, meta["elapsed_us"], category, len(payload))
        self._write(payload)
        if counted:
            with self._lock:
                self._unwritten -= 1
                if self._draining and not self._unwritten:
                    self._idle.notify_all()

    def _send_final(self, codec, doc: dict) -> None:
        payload, _ = self._encode_final(codec, doc)
        self._write_payload(payload)

    def _encode_final(self, codec, doc: dict) -> tuple[bytes, str | None]:
        """Encode a final reply; one that cannot be encoded becomes a serialization error."""
        try:
            payload = codec.encode(doc)
        except codecs.EncodeError as exc:
            error = BridgeError("serialization", "unencodable_result", str(exc)[:500], {"format": codec.name})
            meta = doc.get("meta")
            try:
                return codec.encode(envelope.failure(doc["id"], self._wire(error), meta)), "serialization"
            except codecs.EncodeError:
                # The request's own meta cannot be echoed (nested deeper than the format writes):
                # the error goes without it rather than not at all.
                meta = {"elapsed_us": meta["elapsed_us"]} if meta else None
                return codec.encode(envelope.failure(doc["id"], self._wire(error), meta)), "serialization"
        return payload, None if doc["success"] else doc["error"]["category"]

    def _wire(self, error: BridgeError) -> dict:
        return scrub(error.to_wire())

    # -- answers from outside the handler -------------------------------------------

    def expire(self, job: Job) -> None:
        limit = job.request.timeout_ms
        self.finish(job, BridgeError(
            "timeout", "deadline_exceeded", f"no result within timeout_ms={limit}", {"timeout_ms": limit}),
            external=True)

    def cancel(self, rid, reason: str = "cancelled by the client") -> str:
        """Answer request ``rid`` with ``cancelled``; returns its state before ('unknown' if none)."""
        job = self._inflight.get(rid)
        if job is None:
            return "unknown"
        state = job.state
        sent = self.finish(job, BridgeError("cancelled", "cancelled", reason, {"state": state}), external=True)
        return state if sent else "done"

    def jobs(self, session_id=...) -> list[Job]:
        with self._lock:
            jobs = list(self._inflight.values())
        if session_id is ...:
            return jobs
        return [j for j in jobs if j.request.session_id == session_id]

    def end_session(self, session_id: str) -> int:
        """Cancel the session's queued and running requests, then drop the session."""
        session = self.sessions.get(session_id)  # raises not_found
        cancelled = 0
        for job in self.jobs(session_id):
            if self.finish(job, BridgeError(
                    "cancelled", "session_ended", f"session {session_id!r} was ended"), external=True):
                cancelled += 1
        self.sessions.end(session.id)
        return cancelled

    def _session_closed(self, session, reason: str) -> None:
        for backend in self.backends.values():
            try:
                backend.close_session(session, reason)
            except Exception:
                log.exception("backend %s failed to close session %r", backend.name, session.id)

    # -- shutdown ---------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def _written(self) -> bool:
        return not self._unwritten and not self._inline

    def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work, then fail the rest; returns how many were failed."""
        with self._idle:
            self._draining = True
            self._idle.wait_for(self._written, timeout=grace_s)
        failed = 0
        for job in self.jobs():
            if self.finish(job, BridgeError(
                    "shutdown", "shutting_down",
                    f"the worker shut down before the request finished (grace {grace_s} s)"), external=True):
                failed += 1
        # A handler may have claimed its reply just before: let that write land too.
        with self._idle:
            self._idle.wait_for(self._written, timeout=1.0)
        self.scheduler.close()
        self.timers.stop()
        return failed
