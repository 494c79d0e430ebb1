"""Envelopes: a decoded map -> a checked Request (replies and events are written by ``bridge.replies``).

Requests are checked strictly: an unknown top-level field is a ``protocol``
error (a typo such as ``sesion_id`` must not silently run in the global scope).
When a frame cannot be decoded at all, ``recover_id`` tries to read the request
id from the bytes it has, so the client can still match the error reply; it
only ever returns an id found at the top level of the map, never a guess.
"""

from __future__ import annotations

from time import perf_counter_ns
from types import MappingProxyType
from typing import Any, Mapping

import msgpack
import orjson

from .errors import protocol_error
from .limits import ENVELOPE

PROTOCOL_VERSION = 1
PROTOCOL_MINOR = 3  # 1.1: callbacks; 1.2: LM calls; 1.3: admission leases (PROTOCOL.md, changelog)
FEATURES = ("callbacks", "lm_calls", "lm_leases")
FIELDS = frozenset({"id", "command", "args", "session_id", "timeout_ms", "meta", "notify"})
MAX_ID_CHARS: int = ENVELOPE["max_id_chars"]
MAX_COMMAND_CHARS: int = ENVELOPE["max_command_chars"]
MAX_SESSION_ID_CHARS: int = ENVELOPE["max_session_id_chars"]
MAX_TIMEOUT_MS: int = ENVELOPE["max_timeout_ms"]
MAX_META_ENTRIES: int = ENVELOPE["max_meta_entries"]
MAX_NOTIFY_ENTRIES: int = ENVELOPE["max_notify_entries"]
MAX_NOTIFY_CHARS: int = ENVELOPE["max_notify_chars"]
INT64 = 2**63
NO_META: Mapping[str, Any] = MappingProxyType({})  # the meta of a request without one (shared: read-only)
NO_NOTIFY: frozenset = frozenset()  # the optional events of a request that asks for none


class Request:
    """A checked request envelope (a plain slotted class: one is built per frame)."""

    __slots__ = ("id", "command", "args", "session_id", "timeout_ms", "meta", "notify", "received_ns")

    def __init__(self, id, command: str, args: dict, session_id: str | None = None,
                 timeout_ms: int | None = None, meta: Mapping = NO_META, notify: frozenset = NO_NOTIFY) -> None:
        self.id = id
        self.command = command
        self.args = args
        self.session_id = session_id
        self.timeout_ms = timeout_ms
        self.meta = meta
        self.notify = notify  # (1.2) names of optional events the client asked for, e.g. "lm_call"
        self.received_ns = perf_counter_ns()

    @property
    def trace_id(self):
        return self.meta.get("trace_id")


def valid_id(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -INT64 <= value < INT64
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def parse_request(doc) -> Request:
    """Check a decoded payload and return a Request, or raise a protocol BridgeError.

    The error's ``details["id"]`` carries the request id whenever it was valid,
    so the reply can still be matched. (This runs once per frame on the reading
    thread: the common case, a map of valid fields, takes the straight path.)
    """
    if type(doc) is not dict:
        raise protocol_error("not_a_map", f"a request must be a map, got {type(doc).__name__}")
    rid = doc.get("id")
    if not (type(rid) is int and -INT64 <= rid < INT64 or valid_id(rid)):
        raise protocol_error(
            "invalid_id",
            f"'id' must be an integer (64-bit) or a non-empty string of at most {MAX_ID_CHARS} characters",
        )
    command = doc.get("command")
    if type(command) is str and 0 < len(command) <= MAX_COMMAND_CHARS:
        n = len(doc)
        if n == 2:  # {"id", "command"}: nothing else to check
            return Request(rid, command, {})
        if n == 3 and type(args := doc.get("args")) is dict:  # {"id", "command", "args"}
            return Request(rid, command, args)
        if n == 4 and type(args := doc.get("args")) is dict and type(timeout_ms := doc.get("timeout_ms")) is int \
                and 0 < timeout_ms <= MAX_TIMEOUT_MS:  # and "timeout_ms": the Elixir client's usual request
            return Request(rid, command, args, None, timeout_ms)
    if not FIELDS.issuperset(doc):
        unknown = [k for k in doc if k not in FIELDS]
        shown = ", ".join(sorted(map(str, unknown)))[:200]
        raise _bad(rid, "unknown_field", f"unknown envelope field(s): {shown}; allowed: {', '.join(sorted(FIELDS))}")
    if type(command) is not str or not 0 < len(command) <= MAX_COMMAND_CHARS:
        raise _bad(rid, "invalid_command",
                   f"'command' must be a non-empty string of at most {MAX_COMMAND_CHARS} characters")
    args = doc.get("args")
    if args is None:
        args = {}
    elif type(args) is not dict:
        raise _bad(rid, "invalid_args", f"'args' must be a map, got {type(args).__name__}")
    session_id = doc.get("session_id")
    if session_id is not None and (type(session_id) is not str or not 0 < len(session_id) <= MAX_SESSION_ID_CHARS):
        raise _bad(rid, "invalid_session_id",
                   f"'session_id' must be a non-empty string of at most {MAX_SESSION_ID_CHARS} characters")
    timeout_ms = doc.get("timeout_ms")
    if timeout_ms is not None and (type(timeout_ms) is not int or not 0 < timeout_ms <= MAX_TIMEOUT_MS):
        raise _bad(rid, "invalid_timeout", f"'timeout_ms' must be an integer from 1 to {MAX_TIMEOUT_MS}")
    meta = doc.get("meta")
    if meta is None:
        meta = NO_META
    elif type(meta) is not dict or len(meta) > MAX_META_ENTRIES:
        raise _bad(rid, "invalid_meta", f"'meta' must be a map of at most {MAX_META_ENTRIES} entries")
    notify = doc.get("notify")
    if notify is None:
        notify = NO_NOTIFY
    elif type(notify) is not list or len(notify) > MAX_NOTIFY_ENTRIES or not all(
            type(name) is str and 0 < len(name) <= MAX_NOTIFY_CHARS for name in notify):
        raise _bad(rid, "invalid_notify", f"'notify' must be a list of at most {MAX_NOTIFY_ENTRIES} event names "
                   f"(strings of 1 to {MAX_NOTIFY_CHARS} characters)")
    else:
        notify = frozenset(notify)  # names this worker does not know are kept and never match: ignored
    return Request(rid, command, args, session_id, timeout_ms, meta, notify)


def _bad(rid, code: str, message: str):
    return protocol_error(code, message, id=rid)


# -- recovering the id of a frame that cannot be decoded ---------------------


def recover_id(head: bytes, fmt: str | None):
    """The top-level ``id`` found in the first bytes of a payload, or None."""
    try:
        if fmt == "msgpack":
            return _msgpack_id(head)
        if fmt == "json":
            return _json_id(head)
    except Exception:  # best effort by definition: any failure means "unknown"
        return None
    return None


def _msgpack_id(head: bytes):
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(head)
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if key == "id":
            value = unpacker.unpack()
            return value if valid_id(value) else None
        unpacker.skip()
    return None


def _json_id(head: bytes):
    """Scan JSON text for a key "id" at depth 1 and read a number or string after it."""
    # Invalid UTF-8 stays invalid (as lone surrogates, which orjson refuses below): replacing
    # it with U+FFFD would "recover" an id the client never sent.
    text = head.decode("utf-8", errors="surrogateescape")
    depth, i, n = 0, 0, len(text)
    expect_key = False
    while i < n:
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i)
            if end < 0:
                return None
            if depth == 1 and expect_key and text[i + 1 : end] == "id":
                return _json_scalar_after_colon(text, end + 1)
            i = end + 1
            expect_key = False
            continue
        if ch in "{[":
            depth += 1
            expect_key = ch == "{" and depth == 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 1:
            expect_key = True
        i += 1
    return None


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _json_scalar_after_colon(text: str, i: int):
    rest = text[i:].lstrip()
    if not rest.startswith(":"):
        return None
    rest = rest[1:].lstrip()
    if rest.startswith('"'):
        end = _string_end(rest, 0)
        token = rest[: end + 1] if end > 0 else ""
    else:
        digits = len(rest) - len(rest.lstrip("-0123456789"))
        token = rest[:digits]
        # A number must be seen to end, or a cut head would turn 123 into 12.
        if digits == len(rest) or rest[digits] not in ",} \t\r\n":
            return None
    if not token:
        return None
    value = orjson.loads(token)
    return value if valid_id(value) else None
