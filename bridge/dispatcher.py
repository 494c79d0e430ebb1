"""The protocol half of the worker: payload -> request -> handler -> one final reply.

The dispatcher owns no file descriptor: it is given a ``write(payload: bytes)``
callable and is fed payloads (or bad-frame notices) by the worker loop, so it
can be driven directly in tests. It decides the reply format, checks envelopes
and arguments, runs control commands inline on the reading thread (so ``ping``,
``cancel`` and ``stats`` answer at once under any load), and hands every other
request to the scheduler through the in-flight table (``inflight``), which
guarantees one final reply per request whoever produces it.

It is also what the core's control commands manage the worker through (the
``Control`` interface of ``core_commands``): handlers get a ``Context``, never
the dispatcher.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any, Callable

from . import __version__, codecs, envelope
from .context import Context
from .errors import BridgeError, protocol_error
from .inflight import InFlight, Job
from .limits import Limits
from .logs import enter_request, leave_request
from .redaction import scrub
from .registry import Command, Registry
from .scheduler import Scheduler
from .sessions import Session, SessionTable
from .stats import Stats
from .timers import Timers

log = logging.getLogger("portbridge.dispatcher")


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
        self.inflight = InFlight(self.timers, self.scheduler, self.sessions, self._answer)
        self.pinned = None if fmt == "auto" else codecs.get(fmt)
        # A value takes at least half a byte (a 1-byte empty map in an array is an element and a
        # container): shorter payloads cannot hold too many and skip the count.
        self._count_values_from = self.limits.max_frame_values // 2
        self.accepting = True
        self.on_shutdown: Callable[[str], None] = lambda reason: None
        self._write = write
        self.last_codec = self.pinned or codecs.JSON
        self._global_store = self.sessions.global_session.store
        self.timers.every(max(min(self.limits.session_ttl_s / 4, 30.0), 0.05), self.sessions.expire)

    # -- output -------------------------------------------------------------------

    def send_event(self, name: str, data: Any, rid: Any = None, codec: Any = None) -> None:
        """An event of request ``rid`` in its format, or a worker-level one (``rid`` None)."""
        codec = codec or self.last_codec
        try:
            payload = codec.encode(envelope.event(rid, name, data))
        except codecs.EncodeError as exc:
            log.warning("dropped a %r event that cannot be encoded: %s", name, exc)
            return
        self._write(payload)
        self.stats.frame_out(len(payload))
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
            "limits": self.limits.describe(),
        }

    # -- input ----------------------------------------------------------------------

    def handle_payload(self, payload: bytes | bytearray | memoryview) -> None:
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
        codec = (self.pinned or codecs.detect(head) if head else None) or self.last_codec
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

    def reject(self, error: BridgeError, codec: Any, rid: Any = None) -> None:
        """A final error reply for a request that never became a job."""
        log.debug("rejected request id=%r: %s %s", rid, error.code, error.message)
        payload, _ = self._encode_final(codec, envelope.failure(rid, self._wire(error)))
        self.stats.reply(None, 0, error.category, len(payload))
        self._write(payload)

    # -- routing --------------------------------------------------------------------

    def route(self, request: envelope.Request, codec: Any) -> None:
        command = self.registry.lookup(request.command)
        if command is None:
            self._reject_request(request, codec, BridgeError(
                "not_found", "unknown_command",
                f"unknown command {request.command!r}; 'describe' lists the commands",
                {"command": request.command},
            ))
            return
        try:
            request.args = command.check(request.args)  # type: ignore[misc]  # compiled at registration
        except BridgeError as exc:
            self._reject_request(request, codec, exc)
            return
        # Only this (the reading) thread adds to the table: checking, then adding, cannot race.
        if request.id in self.inflight:
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
        self.inflight.add(job)
        try:
            self.scheduler.submit(job)
        except BridgeError as exc:
            self.inflight.finish(job, exc)

    def _reject_request(self, request: envelope.Request, codec: Any, error: BridgeError) -> None:
        self._reply(request, codec, error, None)

    # -- running ----------------------------------------------------------------------

    def _run_control(self, request: envelope.Request, command: Command, codec: Any) -> None:
        """Control commands run right here, on the reading thread: no queue, no session, no job.
        Nobody else can answer them, so there is nothing to book-keep but the reply."""
        inflight = self.inflight
        inflight.inline = True  # shutdown waits for this reply too
        try:
            ctx = Context(request, codec, self._global_store, self._global_store, self.send_event)
            result, error = self._call(command, request, ctx)
            self._reply(request, codec, error, result)
        finally:
            inflight.inline_done()

    def run(self, job: Job) -> None:
        """Run a scheduled job's handler (on a handler thread)."""
        if not job.start():
            return
        ctx = Context(job.request, job.codec, job.session.store, self._global_store, self.send_event, job)
        result, error = self._call(job.command, job.request, ctx)
        self.inflight.finish(job, error, result)

    def _call(self, command: Command, request: envelope.Request, ctx: Context) -> tuple[Any, BridgeError | None]:
        """The handler's (result, None), or (None, its error): every failure becomes one categorised error."""
        token = enter_request(request)
        try:
            return command.handler(ctx, request.args), None
        except BaseException as exc:  # noqa: BLE001
            if ctx.cancelled:  # answered from outside: what the handler raised then goes nowhere
                log.debug("%s stopped after its request was answered: %r", command.name, exc)
                return None, None
            return None, self._classify(exc, command.name)
        finally:
            leave_request(token)

    def _classify(self, exc: BaseException, command: str) -> BridgeError:
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

    def _answer(self, job: Job, error: BridgeError | None, result: Any) -> None:
        """The in-flight table's way to write a job's final reply."""
        self._reply(job.request, job.codec, error, result)

    def _reply(self, request: envelope.Request, codec: Any, error: BridgeError | None, result: Any) -> None:
        """Encode and write a final reply."""
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

    def _encode_final(self, codec: Any, doc: dict) -> tuple[bytes, str | None]:
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

    # -- the control interface (core_commands.Control) --------------------------------

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
        }

    def cancel(self, rid: Any) -> str:
        return self.inflight.cancel(rid)

    def end_session(self, session_id: str) -> int:
        """Cancel the session's queued and running requests, then drop the session."""
        session = self.sessions.get(session_id)  # raises not_found
        cancelled = self.inflight.cancel_session(session_id)
        self.sessions.end(session.id)
        return cancelled

    def shutdown(self, reason: str) -> None:
        self.on_shutdown(reason)

    def _session_closed(self, session: Session, reason: str) -> None:
        for backend in self.backends.values():
            try:
                backend.close_session(session, reason)
            except Exception:
                log.exception("backend %s failed to close session %r", backend.name, session.id)

    # -- shutdown ---------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work, then fail the rest; returns how many were failed."""
        failed = self.inflight.drain(grace_s)
        self.scheduler.close()
        self.timers.stop()
        return failed
