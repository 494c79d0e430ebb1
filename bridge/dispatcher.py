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
import threading
import traceback
from time import perf_counter_ns
from typing import Any, Callable

from . import __version__, codecs, envelope, lmcalls
from .callbacks import Callbacks
from .context import Context, Services
from .envelope import parse_request
from .errors import BridgeError, protocol_error
from .inflight import InFlight, Job
from .limits import Limits
from . import logs
from .logs import enter_request, leave_request
from .redaction import scrub
from .registry import Command, Registry
from .scheduler import Scheduler
from .sessions import Session, SessionTable
from .stats import NO_COMMAND, Stats
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
        # The codec each first byte of a payload selects (--format pins one for every byte).
        self._codec_of = codecs.BY_FIRST_BYTE if self.pinned is None else (self.pinned,) * 256
        # A value takes at least half a byte (a 1-byte empty map in an array is an element and a
        # container): shorter payloads cannot hold too many and skip the count.
        self._count_values_from = self.limits.max_frame_values // 2
        self.accepting = True
        self.on_shutdown: Callable[[str], None] = lambda reason: None
        self._write = write
        self.last_codec = self.pinned or codecs.JSON
        self._global_store = self.sessions.global_session.store
        self._commands = registry.commands
        self._tally = self.stats.inline
        self.callbacks = Callbacks(self._send_event_or_raise, self.limits.max_callbacks)
        self._services = Services(self.send_event, self.callbacks, self._global_store)
        self._reading = logs.READING
        self._reading.ident = threading.get_ident()  # the thread that feeds this dispatcher
        self._encoders = {codec: codec.raw_encoder() for codec in codecs.CODECS.values()}  # reading thread's
        self._in_flight_ids = self.inflight.by_id
        self.timers.every(max(min(self.limits.session_ttl_s / 4, 30.0), 0.05), self.sessions.expire)

    # -- output -------------------------------------------------------------------

    def send_event(self, name: str, data: Any, rid: Any = None, codec: Any = None) -> None:
        """An event of request ``rid`` in its format, or a worker-level one (``rid`` None); one that
        cannot be encoded is dropped (and logged)."""
        try:
            self._send_event_or_raise(name, data, rid, codec)
        except codecs.EncodeError as exc:
            log.warning("dropped a %r event that cannot be encoded: %s", name, exc)

    def _send_event_or_raise(self, name: str, data: Any, rid: Any = None, codec: Any = None) -> None:
        payload = (codec or self.last_codec).encode(envelope.event(rid, name, data))
        self.stats.event(name, len(payload))
        self._write(payload)

    def ready_data(self) -> dict:
        return {
            "protocol": envelope.PROTOCOL_VERSION,
            "protocol_minor": envelope.PROTOCOL_MINOR,
            "features": list(envelope.FEATURES),
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
        tally = self._tally  # only this (the reading) thread counts input
        tally.frames_in += 1
        tally.bytes_in += len(payload)
        codec = self._codec_of[payload[0]]
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
                request = parse_request(codec.decode_bounded(payload, self.limits.max_frame_values))
            else:
                request = parse_request(codec.loads(payload))
        except Exception as exc:  # noqa: BLE001 -- sorted out off the hot path
            self._unreadable(payload, codec, exc)
            return
        # Routing: the command, its args, then inline (control) or through the in-flight table.
        command = self._commands.get(request.command) or self.registry.lookup(request.command)
        if command is None:
            self._reject_request(request, codec, BridgeError(
                "not_found", "unknown_command",
                f"unknown command {request.command!r}; 'describe' lists the commands",
                {"command": request.command},
            ))
            return
        if request.args or not command.empty_args_ok:
            try:
                request.args = command.check(request.args)
            except BridgeError as exc:
                self._reject_request(request, codec, exc)
                return
        # Only this (the reading) thread adds to the table: checking, then adding, cannot race.
        if request.id in self._in_flight_ids:
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


    def _unreadable(self, payload: bytes | bytearray | memoryview, codec: Any, exc: Exception) -> None:
        """Reply to a payload that did not decode, or decoded to no valid request."""
        if isinstance(exc, BridgeError):
            self.reject(exc, codec, exc.details.get("id"))
            return
        if not isinstance(exc, codecs.DecodeError):  # the library's own error, from codec.loads
            try:
                codec.decode(payload)
                raise exc  # the decode succeeded this time: not a bad payload, a bug
            except codecs.DecodeError as decode_error:
                exc = decode_error
        rid = envelope.recover_id(bytes(payload[:4096]), codec.name)
        if isinstance(exc, codecs.TooManyValues):
            self.reject(protocol_error("too_many_values", str(exc), max_frame_values=exc.limit, format=codec.name),
                        codec, rid)
        else:
            self.reject(protocol_error("undecodable", str(exc)[:500], format=codec.name), codec, rid)

    def handle_oversized(self, length: int, head: bytes) -> None:
        self._tally.frame_in(length)
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
        self._tally.frame_in(0)
        self.reject(protocol_error("empty_frame", "a frame of length 0 carries no request"), self.last_codec)

    def reject(self, error: BridgeError, codec: Any, rid: Any = None) -> None:
        """A final error reply for a request that never became a job."""
        log.debug("rejected request id=%r: %s %s", rid, error.code, error.message)
        payload, _ = self._encode_final(codec, envelope.failure(rid, self._wire(error)))
        self._tally.reply(NO_COMMAND, 0, error.category, len(payload))
        self._write(payload)

    # -- routing --------------------------------------------------------------------

    def _reject_request(self, request: envelope.Request, codec: Any, error: BridgeError) -> None:
        self._reply(request, codec, error, None)

    # -- running ----------------------------------------------------------------------

    def _run_control(self, request: envelope.Request, command: Command, codec: Any) -> None:
        """Control commands run right here, on the reading thread: no queue, no session, no job.
        Nobody else can answer them, so there is nothing to book-keep but the reply."""
        inflight = self.inflight
        inflight.inline = True  # shutdown waits for this reply too
        try:
            ctx = Context(request, codec, self._global_store, self._services)
            reading = self._reading
            reading.request = request  # what log records of this thread belong to
            try:
                result = command.handler(ctx, request.args)
            except BaseException as exc:  # noqa: BLE001
                self._reply(request, codec, self._classify(exc, command.name), None)
                return
            finally:
                reading.request = None
            # The usual case, kept short (it is every ping's latency): this thread's own encoder,
            # its own tally, no lock but the write's.
            elapsed_us = (perf_counter_ns() - request.received_ns) // 1000
            meta = {**request.meta, "elapsed_us": elapsed_us} if request.meta else {"elapsed_us": elapsed_us}
            try:
                payload = self._encoders[codec](
                    {"id": request.id, "success": True, "result": result, "meta": meta})
            except Exception:  # noqa: BLE001 -- unencodable: the slow path says how, as a serialization error
                self._encoders[codec] = codec.raw_encoder()
                self._reply(request, codec, None, result)
                return
            # (Tally.reply, written out: a call is a tenth of a ping's time here)
            tally = self._tally
            tally.frames_out += 1
            tally.bytes_out += len(payload)
            entry = tally.commands.get(request.command)
            if entry is None:
                entry = tally.new_command(request.command)
            entry.count += 1
            entry.ring.append(elapsed_us)
            self._write(payload)
        finally:
            inflight.inline = False
            if inflight.draining:
                inflight.notify_idle()

    def run(self, job: Job) -> None:
        """Run a scheduled job's handler (on a handler thread)."""
        if not job.start():
            return
        request, command = job.request, job.command
        ctx = Context(request, job.codec, job.session.store, self._services, job)
        token = enter_request(request)
        bound = lmcalls.bind(ctx)  # LM calls made on this thread are this request's (admission, lm_call)
        try:
            result, error = command.handler(ctx, request.args), None
        except BaseException as exc:  # noqa: BLE001
            if ctx.cancelled:  # answered from outside: what the handler raised then goes nowhere
                log.debug("%s stopped after its request was answered: %r", command.name, exc)
                return
            result, error = None, self._classify(exc, command.name)
        finally:
            lmcalls.unbind(bound)
            leave_request(token)
        self.inflight.finish(job, error, result)

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
        """The in-flight table's way to write a job's final reply (from any thread)."""
        request = job.request
        payload, elapsed_us, category = self._final(request, job.codec, error, result)
        # Counted before the write, so that a client reading this reply and
        # asking for stats next sees it.
        self.stats.reply(request.command, elapsed_us, category, len(payload))
        self._write(payload)

    def _reply(self, request: envelope.Request, codec: Any, error: BridgeError | None, result: Any) -> None:
        """Write the final reply of a request answered on the reading thread (control, refused)."""
        payload, elapsed_us, category = self._final(request, codec, error, result)
        self._tally.reply(request.command, elapsed_us, category, len(payload))
        self._write(payload)

    def _final(self, request: envelope.Request, codec: Any, error: BridgeError | None,
               result: Any) -> tuple[bytes, int, str | None]:
        """A final reply encoded: (payload, elapsed_us, error category or None)."""
        # meta: the request's, echoed, and the time from decoding the request to encoding this.
        elapsed_us = (perf_counter_ns() - request.received_ns) // 1000
        meta = {**request.meta, "elapsed_us": elapsed_us} if request.meta else {"elapsed_us": elapsed_us}
        if error is None:
            try:
                return codec.encode({"id": request.id, "success": True, "result": result, "meta": meta}), \
                    elapsed_us, None
            except codecs.EncodeError as exc:
                error = BridgeError("serialization", "unencodable_result", str(exc)[:500], {"format": codec.name})
        payload, category = self._encode_final(codec, envelope.failure(request.id, self._wire(error), meta))
        return payload, elapsed_us, category

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
            "callbacks": self.callbacks.describe(),
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
