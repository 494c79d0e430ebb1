"""Every frame the worker writes is built and encoded here: final replies, refusals, events.

One method, ``Replies.final``, encodes, counts and writes every final reply,
whoever produced it: a control command on the reading thread, a handler
thread, the deadline, a cancel, a refused request, a frame that never became a
request. A result the frame's format cannot carry becomes a
``serialization`` error reply, and an error whose details cannot be encoded
either still goes out, without them; the client always gets its one reply.
Error maps are scrubbed of secrets on their way out (``redaction``).

Every final reply carries ``meta``: the request's own, echoed, and
``elapsed_us``, the time from decoding the request to encoding its reply.

Counting goes with writing, before the write, so that a client reading a reply
and asking for ``stats`` next sees it: the reading thread counts in its own
tally without a lock (its replies are the latency every client sees), other
threads in the shared one (``stats``).
"""

from __future__ import annotations

import logging
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Callable

from . import codecs
from .codecs import Codec, EncodeError
from .errors import BridgeError
from .redaction import scrub
from .stats import NO_COMMAND, Stats

if TYPE_CHECKING:
    from .envelope import Request

log = logging.getLogger("portbridge.replies")


class Replies:
    """The worker's output: encodes, counts and writes through ``write(payload)`` (it owns no descriptor)."""

    def __init__(self, write: Callable[[bytes], None], stats: Stats, codec: Codec = codecs.JSON,
                 write_frames: Callable[[list[bytes]], None] | None = None) -> None:
        self._write = write
        # Several frames in one write (events held for a request's next frame, then that frame).
        self.write_frames = write_frames or (lambda payloads: _one_by_one(write, payloads))
        self._stats = stats
        self._tally = stats.inline
        # The format of worker-level frames (ready, log events, refusals of frames whose own format is
        # unknown): the last request's, kept up to date by the dispatcher.
        self.last_codec = codec
        # The reading thread's encoders: the libraries' own callables, one per codec (a msgpack Packer
        # keeps a buffer and is not shared between threads).
        self._encoders: dict[Codec, Callable[[Any], bytes]] = {c: c.raw_encoder() for c in codecs.CODECS.values()}

    def final(self, codec: Codec, request: Request | None, error: BridgeError | None, result: Any = None,
              inline: bool = False, rid: Any = None, held: list[bytes] | None = None) -> None:
        """Encode, count and write one final reply: a result (``error`` None) or an error.

        ``request`` None: the reply to a frame that never became a request (``rid`` if one was
        found in it; no meta). ``inline``: written on the reading thread, with its own encoders and
        tally and no lock but the write's (control replies are the latency every client sees: the
        usual case, a success, takes the straight path, and the tally's bookkeeping is written out).
        ``held``: the request's events that waited for its next frame (``Context.emit_soon``): written
        with the reply, in one write.
        """
        if request is not None:
            rid, command = request.id, request.command
            elapsed_us = (perf_counter_ns() - request.received_ns) // 1000
            meta = {**request.meta, "elapsed_us": elapsed_us} if request.meta else {"elapsed_us": elapsed_us}
        else:
            command, elapsed_us, meta = NO_COMMAND, 0, None
        if error is None:
            doc = {"id": rid, "success": True, "result": result, "meta": meta}
            try:
                payload = self._encoders[codec](doc) if inline else codec.encode(doc)
            except Exception as exc:  # noqa: BLE001 -- a raw encoder raises what its library raises
                payload, category = self._unencodable(codec, doc, exc, inline)
            else:
                if inline:  # every ping's path: Tally.reply written out
                    tally = self._tally
                    tally.frames_out += 1
                    tally.bytes_out += len(payload)
                    entry = tally.commands.get(command)
                    if entry is None:
                        entry = tally.new_command(command)
                    entry.count += 1
                    entry.ring.append(elapsed_us)
                    self._write(payload)
                    return
                category = None
        else:
            payload, category = _failure(codec, rid, error, meta)
        (self._tally if inline else self._stats).reply(command, elapsed_us, category, len(payload))
        self._write_after(held, payload)

    def refuse_frame(self, error: BridgeError, codec: Codec | None = None, rid: Any = None) -> None:
        """The reply to a frame that never became a request, on the reading thread (``codec`` None:
        the last request's format)."""
        log.debug("rejected request id=%r: %s %s", rid, error.code, error.message)
        self.final(codec or self.last_codec, None, error, inline=True, rid=rid)

    def _unencodable(self, codec: Codec, doc: dict, exc: Exception, inline: bool) -> tuple[bytes, str | None]:
        """A success reply whose encoding failed: why, as a serialization error reply."""
        if not isinstance(exc, EncodeError):  # a raw encoder's: the checked one says why
            if inline:
                self._encoders[codec] = codec.raw_encoder()  # never reuse one that failed midway
            try:
                return codec.encode(doc), None
            except EncodeError as checked:
                exc = checked
        return _failure(codec, doc["id"], _serialization(codec, exc), doc["meta"])

    # -- events ---------------------------------------------------------------------------

    def event_or_raise(self, name: str, data: Any, rid: Any = None, codec: Codec | None = None,
                       held: list[bytes] | None = None) -> None:
        """An event of request ``rid`` in its format, or a worker-level one (``rid`` None, the last
        request's format); raises ``EncodeError`` when ``data`` cannot be encoded (``held`` still
        goes out). ``held``: events of the request that waited for its next frame, written with it."""
        try:
            payload = self.event_frame(name, data, rid, codec)
        except EncodeError:
            self._write_after(held, None)
            raise
        self._write_after(held, payload)

    def event_frame(self, name: str, data: Any, rid: Any = None, codec: Codec | None = None) -> bytes:
        """An event's payload, encoded and counted but not written; raises ``EncodeError``."""
        payload = (codec or self.last_codec).encode({"id": rid, "event": name, "data": data})
        self._stats.event(name, len(payload))
        return payload

    def event(self, name: str, data: Any, rid: Any = None, codec: Codec | None = None,
              held: list[bytes] | None = None) -> None:
        """As ``event_or_raise``, but an event that cannot be encoded is dropped (and logged)."""
        self._write_after(held, self.droppable_frame(name, data, rid, codec))

    def _write_after(self, held: list[bytes] | None, payload: bytes | None) -> None:
        """``payload`` (if any) after the frames ``held`` for it, in one write."""
        if held:
            self.write_frames([*held, payload] if payload is not None else held)
        elif payload is not None:
            self._write(payload)

    def droppable_frame(self, name: str, data: Any, rid: Any = None, codec: Codec | None = None) -> bytes | None:
        """As ``event_frame``, but an event that cannot be encoded is dropped (and logged): None."""
        try:
            return self.event_frame(name, data, rid, codec)
        except EncodeError as exc:
            log.warning("dropped a %r event that cannot be encoded: %s", name, exc)
            return None


def _failure(codec: Codec, rid: Any, error: BridgeError, meta: dict | None) -> tuple[bytes, str]:
    """An error reply's payload and category; one that cannot be encoded becomes a serialization error."""
    doc = {"id": rid, "success": False, "error": scrub(error.to_wire())}
    if meta:
        doc["meta"] = meta
    try:
        return codec.encode(doc), error.category
    except EncodeError as exc:
        doc["error"] = scrub(_serialization(codec, exc).to_wire())
    try:
        return codec.encode(doc), "serialization"
    except EncodeError:
        # The request's own meta cannot be echoed (nested deeper than the format writes):
        # the error goes without it rather than not at all.
        if meta:
            doc["meta"] = {"elapsed_us": meta["elapsed_us"]}
        return codec.encode(doc), "serialization"


def _serialization(codec: Codec, exc: EncodeError) -> BridgeError:
    return BridgeError("serialization", "unencodable_result", str(exc)[:500], {"format": codec.name})


def _one_by_one(write: Callable[[bytes], None], payloads: list[bytes]) -> None:
    for payload in payloads:
        write(payload)
