"""Payload codecs: a frame's payload <-> one map, as JSON (orjson) or MessagePack.

Both codecs have the same small API (``name``, ``encode``, ``decode``) and raise
the same two exceptions, so the rest of the worker never asks which one it has.
``detect`` picks a codec from a payload's first byte, as ``--format auto`` does.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Protocol

import msgpack
import orjson


class DecodeError(ValueError):
    """The payload is not a valid document in the codec's format."""


class EncodeError(ValueError):
    """The value cannot be represented in the codec's format."""


class TooManyValues(DecodeError):
    """The payload holds more values than allowed: refused before they are built (a memory bound).

    Values are every array element, every map entry and every container. A
    64 MiB frame of empty maps would otherwise become 64 million dicts: ~5 GB.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"the payload holds more than {limit} values (arrays' elements, maps' entries and "
                         "the containers themselves; --max-frame-values)")
        self.limit = limit


# Deleted by bytes.translate, leaving the bytes that can start a JSON value's slot: , [ {
_NOT_JSON_MARKS = bytes(b for b in range(256) if b not in b",[{")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_values(data: bytes | bytearray, limit: int) -> int:
    """An upper bound of the values in a JSON text: each element follows a comma or opens its
    container, so values <= commas + 2 * containers. Marks inside strings count too, unless a
    second look without the strings is needed (texts full of commas)."""
    marks = data.translate(None, _NOT_JSON_MARKS)
    bound = len(marks) + marks.count(b"[") + marks.count(b"{")
    if bound > limit:
        marks = _JSON_STRING.sub(b"", data).translate(None, _NOT_JSON_MARKS)
        bound = len(marks) + marks.count(b"[") + marks.count(b"{")
    return bound


class JsonCodec:
    name = "json"
    # The library's own decoder, for the hot path: it raises what the library raises (decode
    # the payload again with ``decode`` to get the DecodeError of a bad one).
    loads = staticmethod(orjson.loads)

    def raw_encoder(self):
        """A fresh encoder for one thread's hot path: the library's own callable, raising what the
        library raises (``encode`` the value again for the EncodeError; then take a fresh one)."""
        return orjson.dumps

    def encode(self, value) -> bytes:
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise EncodeError(f"cannot encode as JSON: {exc}") from None

    def decode(self, payload: bytes | bytearray | memoryview) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None

    def decode_bounded(self, payload, max_values: int):
        """``decode``, but a payload of more than ``max_values`` values raises TooManyValues first."""
        data = payload if isinstance(payload, (bytes, bytearray)) else bytes(payload)
        if _json_values(data, max_values) > max_values:
            raise TooManyValues(max_values)
        return self.decode(data)


class MsgpackCodec:
    name = "msgpack"

    @staticmethod
    def loads(payload, unpackb=msgpack.unpackb):
        """As JsonCodec.loads: the library's decoder, raising its own errors. Any scalar may be a map
        key in MessagePack (Msgpax agrees); only the envelope's own keys must be strings, which the
        envelope check enforces. (A function, not a partial: its keywords cost more per call.)"""
        return unpackb(payload, raw=False, strict_map_key=False)

    def __init__(self) -> None:
        # A Packer keeps an internal buffer: one per thread, reused.
        self._local = threading.local()

    def _packer(self) -> msgpack.Packer:
        packer = getattr(self._local, "packer", None)
        if packer is None:
            packer = self._local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        return packer

    def raw_encoder(self):
        """As JsonCodec.raw_encoder (a packer of its own: never reuse one that failed midway)."""
        return msgpack.Packer(use_bin_type=True, autoreset=True).pack

    def encode(self, value) -> bytes:
        try:
            return self._packer().pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            self._local.packer = None  # never reuse a packer that failed midway
            raise EncodeError(f"cannot encode as MessagePack: {exc}") from None

    def decode(self, payload: bytes):
        try:
            return self.loads(payload)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # UnicodeDecodeError is a ValueError: invalid UTF-8 in a str lands here.
            raise DecodeError(f"invalid MessagePack: {type(exc).__name__}: {exc}") from None

    def decode_bounded(self, payload, max_values: int):
        """``decode``, but a payload of more than ``max_values`` values raises TooManyValues as soon
        as that is known: a container too long is refused at its header, and every container
        built is counted, so at most ``max_values`` values ever exist."""
        left = [max_values]

        def count(container):
            left[0] -= len(container) + 1
            if left[0] < 0:
                raise TooManyValues(max_values)
            return container

        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False, max_array_len=max_values,
                                   max_map_len=max_values, list_hook=count, object_hook=count)
        except TooManyValues:
            raise
        except ValueError as exc:
            if "exceeds max_array_len" in str(exc) or "exceeds max_map_len" in str(exc):
                raise TooManyValues(max_values) from None
            raise DecodeError(f"invalid MessagePack: {type(exc).__name__}: {exc}") from None
        except (TypeError, msgpack.FormatError, msgpack.StackError) as exc:
            raise DecodeError(f"invalid MessagePack: {type(exc).__name__}: {exc}") from None


class Codec(Protocol):
    """What both codecs offer (their APIs are identical)."""

    name: str

    def encode(self, value: Any) -> bytes: ...
    def decode(self, payload: Any) -> Any: ...
    def decode_bounded(self, payload: Any, max_values: int) -> Any: ...
    def loads(self, payload: Any) -> Any: ...
    def raw_encoder(self) -> Callable[[Any], bytes]: ...


JSON: Codec = JsonCodec()
MSGPACK: Codec = MsgpackCodec()
CODECS: dict[str, Codec] = {JSON.name: JSON, MSGPACK.name: MSGPACK}
FORMATS = tuple(CODECS)

_JSON_FIRST = frozenset(b"{ \t\r\n")
_MSGPACK_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


# The codec each possible first byte announces (None: no map), for one lookup per frame.
BY_FIRST_BYTE: tuple[Codec | None, ...] = tuple(
    JSON if b in _JSON_FIRST else MSGPACK if b in _MSGPACK_MAP_FIRST else None for b in range(256)
)


def detect(payload: bytes | bytearray | memoryview) -> Codec | None:
    """The codec a payload's first byte announces, or None if it announces no map."""
    return BY_FIRST_BYTE[payload[0]]


def get(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(FORMATS)}") from None
