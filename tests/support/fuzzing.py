"""Hostile input for a real worker: what to send, how to write it, and what must come back.

Three parts, shared by ``tests/test_fuzz.py`` (bounded, in CI) and the soak
command ``python -m tests.fuzz`` (as long as you like):

* **Writers** that can say what ordinary encoders refuse to: duplicate keys
  (``Pairs``), invalid UTF-8 inside a string (``Raw``), NaN and infinities and
  integers of any size as JSON literals, MessagePack maps and strings with
  hand-made headers.
* **Strategies** (hypothesis) for payloads: envelopes with a wrong type at any
  field, deep nesting, huge strings and arrays, ext types and timestamps,
  truncated and mutated encodings, random bytes; and for whole byte streams
  whose frame lengths lie.
* **Oracles** written from ``protocol/PROTOCOL.md``, independent of the worker's
  code: which envelope errors a decoded map deserves (section 4.1), and how
  many replies a byte stream deserves and how the worker must end (section 1).
  ``Harness`` drives one long-lived worker with well-framed cases and checks
  every reply; ``run_stream`` gives one fresh worker a stream that may end it.
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import jsonschema
import msgpack
import orjson
from hypothesis import strategies as st

from bridge.framing import HEADER
from bridge.framing import encode_frame as frame
from bridge.processes import alive as pid_alive
from tests.support import schema_zoo_backend
from tests.support.workers import RawWorker

sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # values nest past 1024 levels

INT64 = 2**63
DESYNC_BYTES = 1024**3  # PROTOCOL.md section 1: a declared length above this ends the stream
FIELDS = ("id", "command", "args", "session_id", "timeout_ms", "meta")
# Commands the long-lived worker may be sent: quick, and none that ends the stream.
SAFE_COMMANDS = ("ping", "echo", "describe", "stats", "health", "cancel", "list_sessions", "end_session", "sleep")
ZOO_COMMANDS = ("zoo",)  # tests/support/schema_zoo_backend.py: every schema keyword
# What a fuzzed worker runs with: small limits, so that huge values cross them cheaply.
FUZZ_MAX_FRAME_BYTES = 256 * 1024
FUZZ_MAX_FRAME_VALUES = 20_000
FUZZ_WORKER_ARGS = ("--max-frame-bytes", str(FUZZ_MAX_FRAME_BYTES), "--max-frame-values", str(FUZZ_MAX_FRAME_VALUES),
                    "--max-sessions", "64",
                    "--log-frames", "--log-level", "debug",
                    "--backends", "", "--backend-module", "tests.support.schema_zoo_backend:backend")


# -- writing what encoders refuse to write ---------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A string whose bytes are written as they are (possibly invalid UTF-8)."""

    data: bytes


@dataclass(frozen=True)
class Packed:
    """MessagePack bytes written as they are (ext types with reserved codes, odd headers)."""

    data: bytes


@dataclass(frozen=True)
class Pairs:
    """A map written entry by entry, so a key may repeat (the last one wins on decoding)."""

    items: tuple

    def last_wins(self) -> dict:
        return {_plain(k): _plain(v) for k, v in self.items}


def _plain(value):
    """The value a correct decoder sees (Pairs collapse, last key wins); Raw has no plain form."""
    if isinstance(value, Pairs):
        return value.last_wins()
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write_json(value) -> bytes:
    """JSON text for ``value``, including what JSON forbids: NaN, Infinity, raw bytes, big integers."""
    parts: list[bytes] = []
    _json_into(value, parts)
    return b"".join(parts)


def _json_into(value, out: list) -> None:
    if value is None or isinstance(value, bool):
        out.append({None: b"null", True: b"true", False: b"false"}[value])
    elif isinstance(value, int):
        out.append(str(value).encode())
    elif isinstance(value, float):
        if math.isnan(value):
            out.append(b"NaN")
        elif math.isinf(value):
            out.append(b"Infinity" if value > 0 else b"-Infinity")
        else:
            out.append(orjson.dumps(value))
    elif isinstance(value, str):
        out.append(orjson.dumps(value))
    elif isinstance(value, Raw):
        out.append(b'"' + value.data + b'"')
    elif isinstance(value, (bytes, msgpack.ExtType, msgpack.Timestamp, Packed)):
        out.append(b'"' + repr(value).encode("ascii", "backslashreplace").replace(b'"', b"'") + b'"')
    elif isinstance(value, list):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _json_into(item, out)
        out.append(b"]")
    else:
        items = value.items if isinstance(value, Pairs) else list(value.items())
        out.append(b"{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(b",")
            _json_into(key if isinstance(key, (str, Raw)) else str(key), out)
            out.append(b":")
            _json_into(item, out)
        out.append(b"}")


def write_msgpack(value) -> bytes:
    """MessagePack for ``value``; maps and strings get hand-made headers (duplicate keys, raw bytes)."""
    parts: list[bytes] = []
    _msgpack_into(value, parts)
    return b"".join(parts)


def _header(n: int, fix: int, fix_max: int, codes: tuple) -> bytes:
    if n <= fix_max:
        return bytes([fix | n])
    for code, fmt in codes:
        if n < 256 ** struct.calcsize(fmt):
            return bytes([code]) + struct.pack(fmt, n)
    raise ValueError(n)


def _msgpack_into(value, out: list) -> None:
    if isinstance(value, Packed):
        out.append(value.data)
    elif isinstance(value, Raw):
        out.append(_header(len(value.data), 0xA0, 31, ((0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I"))) + value.data)
    elif isinstance(value, list):
        out.append(_header(len(value), 0x90, 15, ((0xDC, ">H"), (0xDD, ">I"))))
        for item in value:
            _msgpack_into(item, out)
    elif isinstance(value, (dict, Pairs)):
        items = value.items if isinstance(value, Pairs) else list(value.items())
        out.append(_header(len(items), 0x80, 15, ((0xDE, ">H"), (0xDF, ">I"))))
        for key, item in items:
            _msgpack_into(key, out)
            _msgpack_into(item, out)
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < 2**64:
        out.append(msgpack.packb(float(value)))  # MessagePack has no integer this large
    else:
        out.append(msgpack.packb(value, use_bin_type=True))


WRITERS = {"json": write_json, "msgpack": write_msgpack}


# -- the oracle for decoded envelopes (PROTOCOL.md 4.1) -------------------------------------


def valid_id(value) -> bool:
    if type(value) is int:
        return -INT64 <= value < INT64
    return type(value) is str and 0 < len(value) <= 128


def envelope_problems(doc) -> set[str]:
    """The protocol error codes a decoded payload deserves (empty: a valid envelope)."""
    if type(doc) is not dict:
        return {"not_a_map"}
    problems = set()
    if not valid_id(doc.get("id")):
        problems.add("invalid_id")
    if any(key not in FIELDS for key in doc):
        problems.add("unknown_field")
    command = doc.get("command")
    if type(command) is not str or not 0 < len(command) <= 128:
        problems.add("invalid_command")
    if doc.get("args") is not None and type(doc["args"]) is not dict:
        problems.add("invalid_args")
    session_id = doc.get("session_id")
    if session_id is not None and (type(session_id) is not str or not 0 < len(session_id) <= 256):
        problems.add("invalid_session_id")
    timeout = doc.get("timeout_ms")
    if timeout is not None and (type(timeout) is not int or not 0 < timeout <= 86_400_000):
        problems.add("invalid_timeout")
    meta = doc.get("meta")
    if meta is not None and (type(meta) is not dict or len(meta) > 64):
        problems.add("invalid_meta")
    return problems


def msgpack_value_count(payload: bytes) -> int:
    """Values as --max-frame-values counts them in a MessagePack payload: every container,
    array element and map entry as written, duplicate keys included (decoding keeps only the
    last of them, so the decoded value alone can hold far fewer)."""
    count = 0

    def container(items):
        nonlocal count
        count += 1 + len(items)

    msgpack.unpackb(payload, raw=False, strict_map_key=False, list_hook=container, object_pairs_hook=container)
    return count


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_value_bound(payload: bytes) -> int:
    """What the worker measures a JSON text by (PROTOCOL.md limits): outside strings,
    commas + 2 x opening brackets (an empty container counts as if it held one value)."""
    text = _JSON_STRING.sub(b"", payload)
    return text.count(b",") + 2 * (text.count(b"[") + text.count(b"{"))


def too_many_values(fmt: str, payload: bytes) -> bool:
    if len(payload) <= FUZZ_MAX_FRAME_VALUES // 2:
        return False
    count = json_value_bound(payload) if fmt == "json" else msgpack_value_count(payload)
    return count > FUZZ_MAX_FRAME_VALUES


def oracle_decode(payload: bytes):
    """(format, decoded value) as the libraries themselves read the payload; value is None if undecodable."""
    if not payload:
        return None, None
    first = payload[0]
    if first in b"{ \t\r\n":
        fmt = "json"
    elif 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        fmt = "msgpack"
    else:
        return None, None
    try:
        if fmt == "json":
            return fmt, orjson.loads(payload)
        return fmt, msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return fmt, None


def same(a, b) -> bool:
    """Equality where NaN equals NaN (an echo must give back exactly what it got)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- strategies ------------------------------------------------------------------------------

EDGE_INTS = st.sampled_from([0, -1, 1, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64 - 1, 2**64, 10**30, -(10**30)])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
TEXT = st.text(max_size=40) | st.sampled_from(["", "id", "command", "__class__", "\x00", "\u2028", "é" * 3])
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc", b"ok\xc0\xaf"])
EXT = (st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20))
       | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
       # reserved (negative) codes, timestamps (-1) among them, with payloads of any length
       | st.builds(lambda code, data: Packed(b"\xc7" + bytes([len(data), code & 0xFF]) + data),
                   st.integers(-128, -1), st.binary(max_size=20)))


def scalars(fmt: str):
    ints = st.integers(-(2**70), 2**70) | EDGE_INTS
    base = st.none() | st.booleans() | ints | FLOATS | TEXT | st.builds(Raw, INVALID_UTF8)
    if fmt == "msgpack":
        base = base | st.binary(max_size=40) | EXT
    return base


@st.composite
def deep(draw, leaf=st.just(1)):
    """A value nested around the limits that matter: 255 (orjson output), 511 (msgpack output), 1024 (input)."""
    depth = draw(st.sampled_from([254, 255, 256, 511, 512, 1023, 1024, 1025, 1100]) | st.integers(1, 1100))
    as_map = draw(st.booleans())
    value = draw(leaf)
    for _ in range(depth):
        value = {"a": value} if as_map else [value]
    return value


@st.composite
def huge(draw):
    """A long string or array built cheaply (their size, not their content, is the point)."""
    n = draw(st.sampled_from([4096, 65_535, 65_536, 300_000]) | st.integers(0, 300_000))
    kind = draw(st.sampled_from(["str", "list", "map", "raw"]))
    if kind == "str":
        return draw(st.sampled_from("xé€😀"))[:1] * n
    if kind == "list":
        return [0] * (n // 4)
    if kind == "map":
        return {str(i): i for i in range(n // 64)}
    return Raw(b"\xff" * n)


def values(fmt: str, big: bool = True):
    leaves = scalars(fmt) | deep() | huge() if big else scalars(fmt)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=5)
        | st.dictionaries(TEXT, inner, max_size=5)
        | st.builds(Pairs, st.lists(st.tuples(st.sampled_from(["a", "a", "b"]), inner), max_size=4).map(tuple)),
        max_leaves=8,
    )


def wrong_values(fmt: str, field: str):
    """Values of the wrong type (or out of range) for one envelope field."""
    common = st.booleans() | FLOATS | st.lists(scalars(fmt), max_size=3) | st.dictionaries(TEXT, scalars(fmt), max_size=3)
    if fmt == "msgpack":
        common = common | st.binary(max_size=8) | EXT
    by_field = {
        "id": st.none() | st.sampled_from([INT64, -INT64 - 1, 2**64 - 1, "", "i" * 129]),
        "command": st.none() | st.integers() | st.sampled_from(["", "c" * 129]),
        "args": st.integers() | st.text(max_size=5),
        "session_id": st.integers() | st.sampled_from(["", "s" * 257]),
        "timeout_ms": st.sampled_from([0, -1, 86_400_001, INT64, "100", 1.5]),
        "meta": st.integers() | st.text(max_size=5) | st.just({str(i): i for i in range(65)}),
    }
    if field in ("args", "meta"):
        common = common.filter(lambda v: not isinstance(v, dict))
    if field == "id":
        common = common | st.builds(Raw, INVALID_UTF8)  # not an id: never to be "recovered" as one
    return by_field[field] | common


ZOO_VALID = {
    "mode": st.sampled_from(["fast", "slow", 1, None]),
    "exact": st.just("exact"),
    "name": st.from_regex(r"\A[a-z]{1,16}\Z"),
    "count": st.integers(0, 100),
    "ratio": st.floats(0, 1),
    "flag": st.booleans(),
    "tags": st.lists(st.text(max_size=8), min_size=1, max_size=4),
    "either": st.integers() | st.lists(st.sampled_from(["a", "b"]), max_size=3),
    "nested": st.fixed_dictionaries({}, optional={"inner": st.just("x"), "k": st.integers()}),
    "nullable": st.none() | st.text(max_size=5),
}
ZOO_NEAR_MISS = st.sampled_from([True, False, 1.0, 0, "FAST", "exact ", "", "a" * 17, -1, 101, 1.5, math.nan,
                                 math.inf, [], ["a", "c"], {"inner": "y"}, {"a": 1, "b": 2, "c": 3, "d": 4}])
_STRICT = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, v: isinstance(v, int) and not isinstance(v, bool))
ZOO_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT)(
    schema_zoo_backend.SCHEMA)


def zoo_accepts(args) -> bool:
    """The reference validator's verdict, with the registry's two documented strictnesses:
    integers are ints (1.0 is not one) and NaN is within no bounds."""
    ratio = args.get("ratio") if isinstance(args, dict) else None
    if isinstance(ratio, float) and math.isnan(ratio):
        return False
    return ZOO_VALIDATOR.is_valid(args)


@st.composite
def valid_args(draw, command: str, fmt: str):
    if command == "zoo":
        args = {}
        for name, good in ZOO_VALID.items():
            how = draw(st.sampled_from(["good", "good", "near", "wrong", "missing", "missing"]))
            if how != "missing":
                args[name] = draw({"good": good, "near": ZOO_NEAR_MISS, "wrong": values(fmt)}[how])
        if draw(st.integers(0, 5)) == 0:
            args[draw(TEXT)] = 1
        return args
    if command == "sleep":
        return {"ms": draw(st.integers(0, 20))}
    if command == "cancel":
        return {"request_id": draw(st.integers(-5, 5) | st.text(min_size=1, max_size=5))}
    if command == "end_session":
        return draw(st.just({}) | st.fixed_dictionaries({"session_id": st.text(min_size=1, max_size=8)}))
    if command == "echo":
        return draw(st.dictionaries(TEXT, values(fmt), max_size=4))
    return {}


@st.composite
def envelopes(draw, fmt: str):
    """A request map, each field valid, wrong, missing or repeated; sometimes an unknown field."""
    command = draw(st.sampled_from(SAFE_COMMANDS + ZOO_COMMANDS) | TEXT.filter(lambda c: c != "shutdown"))
    good = {
        "id": st.integers(-INT64, INT64 - 1) | st.text(min_size=1, max_size=128),
        "command": st.just(command),
        "args": valid_args(command, fmt) if command in SAFE_COMMANDS + ZOO_COMMANDS
        else st.dictionaries(TEXT, values(fmt), max_size=3),
        "session_id": st.none() | st.sampled_from(["s1", "s2", "é" * 256]),
        "timeout_ms": st.none() | st.integers(1, 86_400_000),
        "meta": st.none() | st.dictionaries(TEXT, values(fmt), max_size=3),
    }
    items = []
    for name in FIELDS:
        how = draw(st.sampled_from(["good"] * 6 + ["wrong", "missing", "repeat"]))
        if how == "missing" and name in ("id", "command"):
            how = draw(st.sampled_from(["good", "missing"]))
        if how == "missing":
            continue
        value = draw(good[name] if how != "wrong" else wrong_values(fmt, name))
        if how == "repeat":
            items.append((name, draw(wrong_values(fmt, name) | good[name])))
        items.append((name, value))
    if draw(st.integers(0, 9)) == 0:
        items.append((draw(TEXT.filter(lambda k: k not in FIELDS) | st.sampled_from(["sesion_id", "ID"])), 1))
    order = draw(st.permutations(range(len(items))))
    return Pairs(tuple(items[i] for i in order))


FIELD_CODES = {"id": "invalid_id", "command": "invalid_command", "args": "invalid_args",
               "session_id": "invalid_session_id", "timeout_ms": "invalid_timeout", "meta": "invalid_meta",
               "sesion_id": "unknown_field"}


@st.composite
def wrong_field(draw, fmt: str):
    """An otherwise valid ping with exactly one field wrong (or one unknown field): (map, field name)."""
    name = draw(st.sampled_from(sorted(FIELD_CODES)))
    doc = {"id": draw(st.integers(0, 10**6)), "command": "ping"}
    doc[name] = draw(values(fmt, big=False) if name == "sesion_id" else wrong_values(fmt, name))
    return doc, name


def check_wrong_field(harness: "Harness", fmt: str, doc: dict, name: str) -> None:
    """The one wrong field is named by its own error code, and the id comes back unless it was the id."""
    payload = WRITERS[fmt](doc)
    _, decoded = oracle_decode(payload)
    (reply,) = harness.exchange([payload])
    error = reply.get("error") or {}
    if decoded is None:  # the wrong value itself cannot be decoded (NaN in JSON, invalid UTF-8...)
        assert error.get("code") == "undecodable", reply
        assert reply["id"] in (None, doc["id"]), reply
        return
    assert envelope_problems(decoded) == {FIELD_CODES[name]}, decoded
    assert (error.get("category"), error.get("code")) == ("protocol", FIELD_CODES[name]), reply
    assert reply["id"] == (None if name == "id" else doc["id"]), reply


def check_cuts(harness: "Harness", fmt: str, draw) -> None:
    """One envelope cut after every byte (a sample of the middle when it is long), each cut sent as
    a frame of its own: each is answered once, and never with an id the cut does not really hold."""
    env = draw(envelopes(fmt))
    payload = WRITERS[fmt](env)
    offsets = range(len(payload))
    if len(payload) > 512:
        middle = draw(st.lists(st.integers(64, len(payload) - 65), max_size=64))
        offsets = sorted({*range(64), *middle, *range(len(payload) - 64, len(payload))})
    cuts = [(payload[:i], candidate_ids(env)) for i in offsets]
    for start in range(0, len(cuts), 64):
        harness.check(cuts[start : start + 64])


def candidate_ids(value) -> frozenset:
    """The ids a reply to ``value`` may carry when it cannot be decoded: valid values of a top-level "id"."""
    items = value.items if isinstance(value, Pairs) else value.items() if isinstance(value, dict) else ()
    return frozenset((type(v), v) for k, v in items if k == "id" and valid_id(v))


ANY_ID = None  # a mutated payload may hold any id: its bytes, not its source, say which


@st.composite
def payloads(draw, fmt: str | None = None):
    """(payload bytes, the ids a reply may carry if the payload cannot be decoded: see ``candidate_ids``)."""
    fmt = fmt or draw(st.sampled_from(["json", "msgpack"]))
    kind = draw(st.sampled_from(["envelope"] * 5 + ["value", "truncated", "mutated", "random", "padded"]))
    if kind == "random":
        return draw(st.binary(max_size=200)), ANY_ID
    if kind == "value":
        value = draw(values(fmt))
        return WRITERS[fmt](value), candidate_ids(value)
    env = draw(envelopes(fmt))
    payload = WRITERS[fmt](env)
    ids = candidate_ids(env)
    if kind == "truncated":
        payload = payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    elif kind == "mutated":
        i = draw(st.integers(0, max(len(payload) - 1, 0)))
        payload = payload[:i] + draw(st.binary(min_size=1, max_size=4)) + payload[i + 1 :]
        ids = ANY_ID
    elif kind == "padded":
        payload = draw(st.sampled_from([b" ", b"\n", b""])) + payload + draw(st.sampled_from([b" ", b"\x00", b"}"]))
    return payload, ids


@st.composite
def streams(draw):
    """Bytes whose frame lengths may lie: good frames, lying headers, empty frames, junk, in any order."""
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["frame", "frame", "empty", "liar", "junk", "big"]))
        if kind == "frame":
            parts.append(frame(draw(payloads())[0]))
        elif kind == "empty":
            parts.append(HEADER.pack(0))
        elif kind == "liar":  # a length that does not match the bytes that follow
            declared = draw(st.integers(1, 2**32 - 1) | st.sampled_from(
                [FUZZ_MAX_FRAME_BYTES, FUZZ_MAX_FRAME_BYTES + 1, DESYNC_BYTES, DESYNC_BYTES + 1, 2**32 - 1]))
            parts.append(HEADER.pack(declared) + draw(st.binary(max_size=64)))
        elif kind == "big":  # a whole frame above --max-frame-bytes: skipped, answered, in sync
            parts.append(frame(b'{"id": "big", "pad": "' + b"x" * (FUZZ_MAX_FRAME_BYTES + 1) + b'"}'))
        else:
            parts.append(draw(st.binary(min_size=1, max_size=16)))
    return b"".join(parts)


# -- the oracle for byte streams (PROTOCOL.md 1) ------------------------------------------


@dataclass
class StreamModel:
    frames: int  # complete frames: one final reply each
    ending: str  # "clean", "truncated" (one truncated_frame reply, exit 0) or "desync" (stream_desync, exit 3)

    @property
    def replies(self) -> int:
        return self.frames + (self.ending != "clean")

    @property
    def exit_code(self) -> int:
        return 3 if self.ending == "desync" else 0


def model_stream(data: bytes) -> StreamModel:
    pos, frames = 0, 0
    while True:
        if len(data) - pos < 4:
            return StreamModel(frames, "truncated" if len(data) > pos else "clean")
        (n,) = HEADER.unpack_from(data, pos)
        if n > DESYNC_BYTES:
            return StreamModel(frames, "desync")
        if len(data) - pos - 4 < n:
            return StreamModel(frames, "truncated")
        pos += 4 + n
        frames += 1


# -- running cases -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What a run did, for the soak report."""

    cases: int = 0
    frames: int = 0
    replies: int = 0
    events: int = 0
    workers: int = 0
    crashes: list = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)

    def count(self, reply: dict) -> None:
        """A final reply and its outcome."""
        self.replies += 1
        self.codes["ok" if reply["success"] else f"{reply['error']['category']}/{reply['error']['code']}"] += 1

    def line(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.codes.most_common(8))
        return (f"{self.cases} cases, {self.frames} frames, {self.replies} final replies, {self.events} events, "
                f"{self.workers} workers, {len(self.crashes)} crashes; top outcomes: {top}")


def final_replies(worker: RawWorker, count: int, tally: Tally, timeout: float = 30.0) -> list[dict]:
    """The next ``count`` final replies (events are counted and checked on the way)."""
    out: list[dict] = []
    while len(out) < count:
        doc = worker.read_doc(timeout)
        if doc is None:
            raise WorkerDied(f"stdout ended after {len(out)} of {count} replies")
        if "event" in doc:
            tally.events += 1
            continue
        out.append(doc)
        tally.count(doc)
    return out


class WorkerDied(AssertionError):
    pass


class Harness:
    """One long-lived worker fed well-framed cases; a dead worker fails the case and is replaced."""

    def __init__(self, worker_args=FUZZ_WORKER_ARGS, stderr_dir: str | None = None) -> None:
        self.worker_args = tuple(worker_args)
        self.stderr_dir = stderr_dir or tempfile.mkdtemp(prefix="portbridge-fuzz-")
        self.tally = Tally()
        self.worker: RawWorker | None = None
        self._sent = 0  # frames sent to the current worker
        self._answered = 0
        self._sentinel = 0

    def _live(self) -> RawWorker:
        if self.worker is None:
            path = os.path.join(self.stderr_dir, f"worker-{self.tally.workers}.stderr")
            self.worker = RawWorker(*self.worker_args, stderr_path=path)
            self.tally.workers += 1
            self._sent = self._answered = 0
        return self.worker

    def _died(self, why: str) -> WorkerDied:
        worker, self.worker = self.worker, None
        try:
            code = worker.wait(5)
        except Exception:
            code = None
        worker.kill()
        tail = worker.stderr_text()[-3000:]
        self.tally.crashes.append((why, code, tail))
        return WorkerDied(f"the worker died ({why}; exit code {code}); stderr ends with:\n{tail}")

    def exchange(self, payloads: list[bytes]) -> list[dict]:
        """Send the payloads as frames in one write; return their final replies, then prove the worker
        still answers ping and wrote nothing more."""
        worker = self._live()
        self.tally.cases += 1
        self.tally.frames += len(payloads)
        try:
            worker.send(b"".join(frame(p) for p in payloads))
            self._sent += len(payloads)
            replies = final_replies(worker, len(payloads), self.tally)
            self._answered += len(replies)
            self._sentinel += 1
            sentinel = f"sentinel-{self._sentinel}"
            worker.send(frame(orjson.dumps({"id": sentinel, "command": "ping"})))
            self.tally.frames += 1
            self._sent += 1
            (pong,) = final_replies(worker, 1, self.tally)
            self._answered += 1
        except (OSError, WorkerDied, TimeoutError) as exc:
            raise self._died(f"{type(exc).__name__}: {exc}") from None
        assert pong["id"] == sentinel and pong["success"], f"extra or missing reply: expected the sentinel pong, got {pong}"
        return replies

    def check(self, cases: list[tuple[bytes, object]]) -> list[dict]:
        """Send the cases; every frame gets one final reply, each one right by the oracles."""
        replies = self.exchange([payload for payload, _ in cases])
        check_replies(cases, replies)
        return replies

    def close(self) -> int | None:
        """End the worker with end of input; every frame ever sent must have been answered, exit 0."""
        worker, self.worker = self.worker, None
        if worker is None:
            return None
        worker.close_stdin()
        try:
            leftovers = worker.read_to_end(10)
            code = worker.wait(10)
        finally:
            worker.kill()
        assert not leftovers, f"replies nobody asked for: {leftovers[:3]}"
        assert self._answered == self._sent, (self._answered, self._sent)
        assert code == 0, f"exit code {code}"
        assert not pid_alive(worker.pid)
        return code


def check_replies(cases: list[tuple[bytes, object]], replies: list[dict]) -> None:
    """The replies must pair off with the frames, each one right for its frame. Replies to
    scheduled requests may come in any order, so any pairing will do (a bipartite matching)."""
    fits = [[c for c, case in enumerate(cases) if _fits(case, reply)] for reply in replies]
    owner: dict[int, int] = {}  # frame -> reply

    def place(r: int, seen: set) -> bool:
        for c in fits[r]:
            if c not in seen:
                seen.add(c)
                if c not in owner or place(owner[c], seen):
                    owner[c] = r
                    return True
        return False

    paired = len(replies) == len(cases) and all(place(r, set()) for r in range(len(replies)))
    assert paired, (
        "replies do not pair off with the frames sent:\n"
        + "\n".join(f"  reply {str(r)[:400]} fits frames {row}" for r, row in zip(replies, fits))
        + "\n" + "\n".join(f"  frame {c}: {p[:160]!r}" for c, (p, _) in enumerate(cases)))


def _id_in(rid, ids) -> bool:
    return rid is None or ids is ANY_ID or (type(rid), rid) in ids


def _fits(case, reply: dict) -> bool:
    """Could ``reply`` be the one final reply to ``case`` = (payload, ids it may be matched by)?"""
    payload, ids = case
    rid = reply["id"]
    error = reply.get("error") or {}
    if not payload:
        return error.get("code") == "empty_frame" and rid is None
    if len(payload) > FUZZ_MAX_FRAME_BYTES:
        return error.get("code") == "frame_too_large" and _id_in(rid, ids)
    fmt, doc = oracle_decode(payload)
    if doc is None:  # undecodable: a protocol error, with no id or one truly in the payload
        return not reply["success"] and error["category"] == "protocol" and _id_in(rid, ids)
    if too_many_values(fmt, payload):
        return error.get("code") == "too_many_values" and _id_in(rid, ids if ids is ANY_ID else ids | candidate_ids(doc))
    if error.get("code") == "too_many_values":
        return False
    problems = envelope_problems(doc)
    if problems:
        if reply["success"] or error["category"] != "protocol" or error["code"] not in problems:
            return False
        if "invalid_id" in problems:
            return rid is None
        return rid == doc["id"] and type(rid) is type(doc["id"])
    if rid != doc["id"] or type(rid) is not type(doc["id"]):
        return False
    command = doc["command"]
    if command == "zoo" and (reply["success"] or error["category"] == "validation"):
        return reply["success"] == zoo_accepts(doc.get("args") or {})
    if not reply["success"]:  # a valid envelope: any outcome but a complaint about the envelope
        return error["category"] != "protocol" or error["code"] == "duplicate_id"
    if command == "echo":
        return same(reply["result"], doc.get("args") or {})
    if command == "ping":  # (another request of the same id may have answered {}: not this one)
        result = reply["result"]
        return isinstance(result, dict) and result.get("pong") is True
    return command in SAFE_COMMANDS


def run_stream(data: bytes, worker_args=FUZZ_WORKER_ARGS, stderr_path: str | None = None,
               tally: Tally | None = None) -> StreamModel:
    """Give a fresh worker ``data`` then end its input; check the replies and the exit code."""
    tally = tally or Tally()
    expected = model_stream(data)
    worker = RawWorker(*worker_args, stderr_path=stderr_path)
    tally.workers += 1
    tally.cases += 1
    tally.frames += expected.frames
    try:
        try:
            worker.send(data)
        except BrokenPipeError:
            pass  # it stopped reading (desync) before taking everything: allowed
        worker.close_stdin()
        events: list[dict] = []
        replies = worker.read_to_end(20, events)  # every frame is checked against the schemas
        code = worker.wait(20)
    finally:
        worker.kill()
    tally.events += len(events)
    for reply in replies:
        tally.count(reply)
    endings = [r for r in replies if not r["success"] and r["error"]["code"] in ("truncated_frame", "stream_desync")]
    detail = f"{expected}, got {len(replies)} replies, exit {code}: {[str(r)[:160] for r in replies]}"
    assert len(replies) == expected.replies, detail
    assert code == expected.exit_code, detail
    wanted = {"clean": [], "truncated": ["truncated_frame"], "desync": ["stream_desync"]}[expected.ending]
    assert [r["error"]["code"] for r in endings] == wanted, detail
    assert all(r["id"] is None for r in endings), detail
    assert not pid_alive(worker.pid)
    return expected
