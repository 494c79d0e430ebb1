"""Payload codecs: a frame's payload <-> one map, as JSON (orjson) or MessagePack.

Both codecs have the same small API (``name``, ``encode``, ``decode``) and raise
the same two exceptions, so the rest of the worker never asks which one it has.
``detect`` picks a codec from a payload's first byte, as ``--format auto`` does.
"""

from __future__ import annotations

import threading

import msgpack
import orjson


class DecodeError(ValueError):
    """The payload is not a valid document in the codec's format."""


class EncodeError(ValueError):
    """The value cannot be represented in the codec's format."""


class JsonCodec:
    name = "json"

    def encode(self, value) -> bytes:
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise EncodeError(f"cannot encode as JSON: {exc}") from None

    def decode(self, payload: bytes):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None


class MsgpackCodec:
    name = "msgpack"

    def __init__(self) -> None:
        # A Packer keeps an internal buffer: one per thread, reused.
        self._local = threading.local()

    def _packer(self) -> msgpack.Packer:
        packer = getattr(self._local, "packer", None)
        if packer is None:
            packer = self._local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        return packer

    def encode(self, value) -> bytes:
        try:
            return self._packer().pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            self._local.packer = None  # never reuse a packer that failed midway
            raise EncodeError(f"cannot encode as MessagePack: {exc}") from None

    def decode(self, payload: bytes):
        try:
            # Any scalar may be a map key in MessagePack (Msgpax agrees); only the
            # envelope's own keys must be strings, which the envelope check enforces.
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # UnicodeDecodeError is a ValueError: invalid UTF-8 in a str lands here.
            raise DecodeError(f"invalid MessagePack: {type(exc).__name__}: {exc}") from None


JSON = JsonCodec()
MSGPACK = MsgpackCodec()
CODECS = {JSON.name: JSON, MSGPACK.name: MSGPACK}
FORMATS = tuple(CODECS)

_JSON_FIRST = frozenset(b"{ \t\r\n")
_MSGPACK_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


# The codec each possible first byte announces (None: no map), for one lookup per frame.
BY_FIRST_BYTE = tuple(
    JSON if b in _JSON_FIRST else MSGPACK if b in _MSGPACK_MAP_FIRST else None for b in range(256)
)


def detect(payload: bytes):
    """The codec a payload's first byte announces, or None if it announces no map."""
    return BY_FIRST_BYTE[payload[0]]


def get(name: str):
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(FORMATS)}") from None
