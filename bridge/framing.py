"""Length-prefixed framing, sans I/O.

A frame is a 4-byte unsigned big-endian length N followed by N payload bytes:
exactly Erlang's ``{:packet, 4}``. This module turns bytes into frames and back
and never touches a file descriptor, so it can be tested by feeding it any
chunking of any byte stream.

The decoder yields three kinds of items:

* ``bytes``      a complete payload within the size limit;
* ``Oversized``  a frame whose declared length is above the limit; its payload is
                 skipped without being buffered (only its first bytes are kept, so
                 the caller can try to recover the request id);
* ``Empty``      a frame of length zero.

A declared length above ``desync_bytes`` means the stream is no longer framed
(text written to a framed pipe reads as a length of hundreds of megabytes): the
decoder raises ``StreamDesync`` and the caller must stop reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .limits import FRAMING, WORKER

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_LENGTH = 2**32 - 1
DEFAULT_MAX_FRAME_BYTES: int = WORKER["max_frame_bytes"]
# An Erlang peer never sends more than this in one frame; a larger declared
# length almost always means unframed bytes (any ASCII text does).
DEFAULT_DESYNC_BYTES: int = FRAMING["desync_bytes"]
# How much of an oversized frame is kept to recover its request id.
OVERSIZED_HEAD_BYTES = 4096
# From this size on, a frame gets a buffer of its own size that input is read
# straight into (``writable``/``advance``): no growing buffer, no copy out of it.
DIRECT_BYTES = 256 * 1024
# ... up to this size: the buffer is allocated (and zero-filled) when the header
# arrives, so a larger frame (possible only with a raised --max-frame-bytes)
# grows with its data instead.
DIRECT_MAX_BYTES = 64 * 1024 * 1024


class StreamDesync(Exception):
    """The byte stream cannot be trusted to be framed any more."""

    def __init__(self, declared: int, limit: int) -> None:
        super().__init__(f"declared frame length {declared} is above {limit}: the stream is not framed")
        self.declared = declared
        self.limit = limit


@dataclass(frozen=True)
class Oversized:
    """A frame above the size limit. ``head`` holds its first bytes."""

    length: int
    head: bytes


@dataclass(frozen=True)
class Empty:
    """A frame of length zero."""


def encode_header(length: int) -> bytes:
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"frame payload of {length} bytes does not fit a 4-byte length")
    return HEADER.pack(length)


def encode_frame(payload: bytes) -> bytes:
    """Header + payload as one bytes object (for small payloads and tests)."""
    return encode_header(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes, then iterate ``frames()``.

    ``pending()`` tells how many bytes are buffered (non-zero at end of input
    means the stream ended inside a frame), ``wanted()`` how many more bytes the
    current frame needs, so a transport can size its reads.

    A large frame (``DIRECT_BYTES`` and up) is assembled in a bytearray of its
    exact size, which is also the item returned. While one is incomplete,
    ``writable()`` gives the part still to fill: a transport may read into it
    directly and then call ``advance(n)``, so its bytes are copied once, by the
    kernel.
    """

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        desync_bytes: int = DEFAULT_DESYNC_BYTES,
    ) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.desync_bytes = max(desync_bytes, max_frame_bytes)
        self._buf = bytearray()
        self._pos = 0
        self._length: int | None = None  # declared length of the frame being read
        self._skip = 0  # bytes of an oversized payload still to discard
        self._skip_head = bytearray()
        self._skip_length = 0
        self._frame: bytearray | None = None  # a large frame being assembled in place
        self._filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._skip:
            data = self._discard(data)
        if self._frame is not None and data:
            data = self._fill(data)
        if data:
            self._buf += data

    def _fill(self, data):
        frame = self._frame
        assert frame is not None
        take = min(len(frame) - self._filled, len(data))
        frame[self._filled : self._filled + take] = data[:take]
        self._filled += take
        return data[take:]

    def writable(self) -> memoryview | None:
        """The unfilled part of the large frame being assembled, or None."""
        if self._frame is None or self._buf:
            return None
        return memoryview(self._frame)[self._filled :]

    def advance(self, n: int) -> None:
        """``n`` bytes were written into ``writable()``."""
        self._filled += n

    def _discard(self, data):
        take = min(self._skip, len(data))
        room = OVERSIZED_HEAD_BYTES - len(self._skip_head)
        if room > 0:
            self._skip_head += data[: min(room, take)]
        self._skip -= take
        return data[take:]

    def pending(self) -> int:
        """Bytes received of frames not yet complete (non-zero at end of input = truncated)."""
        if self._skip:
            return HEADER_SIZE + self._skip_length - self._skip
        if self._frame is not None:
            return HEADER_SIZE + self._filled + len(self._buf) - self._pos
        have = len(self._buf) - self._pos
        # A parsed header has left the buffer but still belongs to the unfinished frame.
        return have + (HEADER_SIZE if self._length is not None else 0)

    def wanted(self) -> int:
        """Bytes still needed to complete the current header or frame."""
        have = len(self._buf) - self._pos
        if self._skip:
            return self._skip
        if self._frame is not None:
            return len(self._frame) - self._filled
        if self._length is None:
            return max(HEADER_SIZE - have, 0)
        return max(self._length - have, 0)

    def split(self, data) -> list:
        """Feed ``data`` and return every item now complete, as a list.

        The fast path of a worker's read loop: when no partial frame is pending,
        the complete frames in ``data`` are returned as memoryview slices of
        ``data`` itself, with no copy; they are valid until ``data`` is
        overwritten, so consume them first. Only a trailing partial frame is
        buffered. If the stream lost its framing, the list ends with the
        ``StreamDesync`` exception instead of raising it, so that the frames
        before it are still answered.
        """
        if self._buf or self._skip or self._skip_length or self._length is not None or self._frame is not None:
            self.feed(data)
            return self._drain([])
        view = memoryview(data)
        n = len(view)
        pos = 0
        items = []
        limit = self.max_frame_bytes
        unpack = HEADER.unpack_from
        while n - pos >= HEADER_SIZE:
            (length,) = unpack(view, pos)
            end = pos + HEADER_SIZE + length
            if length == 0 or length > limit or end > n:
                break  # the rare cases, and the partial tail: the buffered path below
            items.append(view[pos + HEADER_SIZE : end])
            pos = end
        if pos < n:
            self.feed(view[pos:])
            self._drain(items)
        return items

    def _drain(self, items: list) -> list:
        try:
            items.extend(self.frames())
        except StreamDesync as exc:
            items.append(exc)
        return items

    def frames(self):
        """Yield every complete item now buffered."""
        while True:
            item = self._next()
            if item is None:
                self._compact()
                return
            yield item

    def _next(self):
        if self._skip:
            return None
        if self._frame is not None:
            if self._filled < len(self._frame):
                return None
            frame, self._frame, self._filled = self._frame, None, 0
            return frame
        if self._skip_length:
            item = Oversized(self._skip_length, bytes(self._skip_head))
            self._skip_length = 0
            self._skip_head = bytearray()
            return item
        buf = self._buf
        if self._length is None:
            if len(buf) - self._pos < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(buf, self._pos)
            self._pos += HEADER_SIZE
            if length == 0:
                return Empty()
            if length > self.desync_bytes:
                raise StreamDesync(length, self.desync_bytes)
            if length > self.max_frame_bytes:
                return self._start_skip(length)
            if DIRECT_BYTES <= length <= DIRECT_MAX_BYTES:
                return self._start_frame(length)
            self._length = length
        end = self._pos + self._length
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            payload = bytes(view[self._pos : end])
        self._pos = end
        self._length = None
        return payload

    def _start_frame(self, length: int):
        self._frame = bytearray(length)
        rest = memoryview(self._buf)[self._pos :]
        leftover = bytes(self._fill(rest))
        rest.release()
        self._buf = bytearray(leftover)
        self._pos = 0
        return self._next()

    def _start_skip(self, length: int):
        rest = bytes(self._buf[self._pos :])
        self._buf = bytearray()
        self._pos = 0
        self._skip = length
        self._skip_length = length
        leftover = self._discard(rest)
        self._buf += leftover
        return self._next()

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
