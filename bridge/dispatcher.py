"""The protocol half of the worker: payload -> request -> handler -> one final reply.

The dispatcher only routes. It is fed payloads (or bad-frame notices) by the
worker loop, decides each frame's format, checks the envelope and the
command's arguments, runs control commands inline on the reading thread (so
``ping``, ``cancel`` and ``stats`` answer at once under any load), and hands
every other request to the runtime's scheduler through the in-flight table,
which guarantees one final reply per request whoever produces it. It owns no
file descriptor and no thread: replies leave through the runtime's ``replies``,
so a test can drive it with a list's ``append`` as the output.
"""

from __future__ import annotations

import threading
from typing import Any

from . import codecs, envelope, logs
from .context import Context
from .envelope import parse_request
from .errors import BridgeError, protocol_error
from .inflight import Job
from .registry import Command
from .runtime import Runtime


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.registry = registry = runtime.registry
        self.runtime = runtime
        self.limits = runtime.limits
        self.pinned = runtime.pinned
        # The codec each first byte of a payload selects (--format pins one for every byte).
        self._codec_of = codecs.BY_FIRST_BYTE if self.pinned is None else (self.pinned,) * 256
        # A value takes at least half a byte (a 1-byte empty map in an array is an element and a
        # container): shorter payloads cannot hold too many and skip the count.
        self._count_values_from = self.limits.max_frame_values // 2
        self.replies = runtime.replies
        self._commands = registry.commands
        self._tally = runtime.stats.inline  # only this (the reading) thread counts input
        self._inflight = runtime.inflight
        self._in_flight_ids = runtime.inflight.by_id
        self._global_store = runtime.sessions.global_session.store
        self._services = runtime.services
        self._reading = logs.READING
        self._reading.ident = threading.get_ident()  # the thread that feeds this dispatcher

    @property
    def last_codec(self) -> codecs.Codec:
        """The format of the last frame read (worker-level frames use it)."""
        return self.replies.last_codec

    # -- input ----------------------------------------------------------------------

    def handle_payload(self, payload: bytes | bytearray | memoryview) -> None:
        """One complete frame payload from the client (bytes, or a memoryview valid during the call)."""
        tally = self._tally
        tally.frames_in += 1
        tally.bytes_in += len(payload)
        codec = self._codec_of[payload[0]]
        if codec is None:
            self.replies.refuse_frame(protocol_error(
                "unknown_format", f"first byte 0x{payload[0]:02x} starts neither a JSON object nor a MessagePack map"))
            return
        self.replies.last_codec = codec
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
            self._refuse(request, codec, BridgeError(
                "not_found", "unknown_command",
                f"unknown command {request.command!r}; 'describe' lists the commands",
                {"command": request.command},
            ))
            return
        if request.args or not command.empty_args_ok:
            try:
                request.args = command.check(request.args)
            except BridgeError as exc:
                self._refuse(request, codec, exc)
                return
        # Only this (the reading) thread adds to the table: checking, then adding, cannot race.
        if request.id in self._in_flight_ids:
            self._refuse(request, codec, protocol_error(
                "duplicate_id", f"request id {request.id!r} is already in flight", id=request.id))
            return
        if command.control:
            # Answered right here, on the reading thread: no queue, no session, no job. Nobody else
            # can answer it, so there is nothing to book-keep but the reply. (Written out here, not
            # called: a call is ~3% of a ping's instructions.)
            inflight = self._inflight
            inflight.inline = True  # shutdown waits for this reply too
            try:
                ctx = Context(request, codec, self._global_store, self._services)
                reading = self._reading
                reading.request = request  # what log records of this thread belong to
                try:
                    result = command.handler(ctx, request.args)
                except BaseException as exc:  # noqa: BLE001
                    self._refuse(request, codec, self.runtime.classify(exc, command.name))
                    return
                finally:
                    reading.request = None
                self.replies.final(codec, request, None, result, True, None)
            finally:
                inflight.inline = False
                if inflight.draining:
                    inflight.notify_idle()
            return
        runtime = self.runtime
        if not runtime.accepting:
            self._refuse(request, codec, BridgeError(
                "shutdown", "shutting_down", "the worker is shutting down and takes no new work"))
            return
        try:
            session = runtime.sessions.acquire(request.session_id)
        except BridgeError as exc:
            self._refuse(request, codec, exc)
            return
        job = Job(request, command, codec, session)
        self._inflight.add(job)
        try:
            runtime.scheduler.submit(job)
        except BridgeError as exc:
            self._inflight.finish(job, exc)

    def _unreadable(self, payload: bytes | bytearray | memoryview, codec: Any, exc: Exception) -> None:
        """Reply to a payload that did not decode, or decoded to no valid request."""
        refuse = self.replies.refuse_frame
        if isinstance(exc, BridgeError):
            refuse(exc, codec, exc.details.get("id"))
            return
        if not isinstance(exc, codecs.DecodeError):  # the library's own error, from codec.loads
            try:
                codec.decode(payload)
                raise exc  # the decode succeeded this time: not a bad payload, a bug
            except codecs.DecodeError as decode_error:
                exc = decode_error
        rid = envelope.recover_id(bytes(payload[:4096]), codec.name)
        if isinstance(exc, codecs.TooManyValues):
            refuse(protocol_error("too_many_values", str(exc), max_frame_values=exc.limit, format=codec.name),
                   codec, rid)
        else:
            refuse(protocol_error("undecodable", str(exc)[:500], format=codec.name), codec, rid)

    def _refuse(self, request: envelope.Request, codec: Any, error: BridgeError) -> None:
        """A request refused (or a control command failed) on the reading thread."""
        self.replies.final(codec, request, error, inline=True)

    def handle_oversized(self, length: int, head: bytes) -> None:
        self._tally.frame_in(length)
        codec = (self.pinned or codecs.detect(head) if head else None) or self.last_codec
        limit = self.limits.max_frame_bytes
        self.replies.refuse_frame(
            protocol_error(
                "frame_too_large",
                f"frame of {length} bytes is above the limit of {limit} bytes (--max-frame-bytes); it was skipped",
                frame_bytes=length,
                max_frame_bytes=limit,
            ),
            codec,
            envelope.recover_id(head, codec.name),
        )

    def handle_empty(self) -> None:
        self._tally.frame_in(0)
        self.replies.refuse_frame(protocol_error("empty_frame", "a frame of length 0 carries no request"))

    def handle_truncated(self, received: int) -> None:
        """Input ended inside a frame."""
        self.replies.refuse_frame(protocol_error(
            "truncated_frame", f"input ended inside a frame ({received} bytes of it received)",
            received_bytes=received))

    def handle_desync(self, declared: int, reason: str) -> None:
        """The stream lost its framing (the worker stops reading after this)."""
        self.replies.refuse_frame(protocol_error("stream_desync", reason, declared_bytes=declared))
