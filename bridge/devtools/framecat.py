"""Readable frames: JSON lines <-> framed streams, for ``portbridge encode|decode``.

Frames may carry things plain JSON cannot (MessagePack bytes, ext types,
timestamps). In readable form those become tagged maps, so that
``decode | encode`` gives back the same values:

    bytes      {"$bytes": "<base64>"}
    ExtType    {"$ext": [code, "<base64>"]}
    Timestamp  {"$timestamp": [seconds, nanoseconds]}
"""

from __future__ import annotations

import base64
import sys

import msgpack
import orjson

from .. import codecs
from ..framing import Empty, FrameDecoder, Oversized, StreamDesync, encode_frame


def to_readable(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, base64.b64encode(value.data).decode()]}
    if isinstance(value, msgpack.Timestamp):
        return {"$timestamp": [value.seconds, value.nanoseconds]}
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else repr(k)): to_readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_readable(v) for v in value]
    if isinstance(value, float) and value != value:
        return {"$float": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"$float": "inf" if value > 0 else "-inf"}
    return value


def from_readable(value):
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "$bytes":
                return base64.b64decode(inner)
            if key == "$ext":
                return msgpack.ExtType(inner[0], base64.b64decode(inner[1]))
            if key == "$timestamp":
                return msgpack.Timestamp(inner[0], inner[1])
            if key == "$float":
                return float(inner)
        return {k: from_readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_readable(v) for v in value]
    return value


def dumps(value, pretty: bool = False) -> str:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(to_readable(value), option=option).decode()


def encode_lines(lines, fmt: str, out) -> int:
    """Write one frame per non-empty JSON line; returns the number of frames."""
    codec = codecs.get(fmt)
    count = 0
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = from_readable(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise SystemExit(f"line {number}: not JSON: {exc}") from None
        out.write(encode_frame(codec.encode(value)))
        count += 1
    out.flush()
    return count


def decode_stream(stream, out, verbose: bool = False, chunk: int = 1 << 16) -> int:
    """Print one JSON line per frame of a captured stream (either format, mixed).

    Bad frames print an ``{"$error": ...}`` line and decoding goes on. Returns
    the number of frames that failed.
    """
    decoder = FrameDecoder(max_frame_bytes=2**32 - 1, desync_bytes=2**32 - 1)
    failures = 0

    def emit(doc) -> None:
        out.write(dumps(doc) + "\n")

    while True:
        data = stream.read(chunk)
        if data:
            decoder.feed(data)
        try:
            for item in decoder.frames():
                if isinstance(item, Empty):
                    failures += 1
                    emit({"$error": "empty frame"})
                    continue
                if isinstance(item, Oversized):  # cannot happen with the limits above
                    continue
                codec = codecs.detect(item)
                try:
                    if codec is None:
                        raise codecs.DecodeError(f"first byte 0x{item[0]:02x} starts no map")
                    value = codec.decode(item)
                except codecs.DecodeError as exc:
                    failures += 1
                    emit({"$error": str(exc), "length": len(item)})
                    continue
                emit({"format": codec.name, "length": len(item), "frame": value} if verbose else value)
        except StreamDesync as exc:
            emit({"$error": str(exc)})
            return failures + 1
        if not data:
            if decoder.pending():
                failures += 1
                emit({"$error": f"stream ended inside a frame ({decoder.pending()} bytes)"})
            return failures


def main_encode(fmt: str) -> int:
    encode_lines(sys.stdin, fmt, sys.stdout.buffer)
    return 0


def main_decode(path: str | None, verbose: bool) -> int:
    stream = open(path, "rb") if path and path != "-" else sys.stdin.buffer
    with stream:
        failures = decode_stream(stream, sys.stdout, verbose)
    sys.stdout.flush()
    return 1 if failures else 0
