"""Codecs: arbitrary nested values round-trip in both formats; detection by first byte."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import codecs

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_scalars = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
msgpack_scalars = (
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text() | st.binary()
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
msgpack_keys = st.text(max_size=8) | st.integers(-1000, 1000) | st.binary(max_size=4)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(msgpack_keys, inner, max_size=5),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_round_trip(value):
    assert codecs.JSON.decode(codecs.JSON.encode(value)) == value


@given(st.dictionaries(msgpack_keys, msgpack_values, max_size=6))
def test_msgpack_round_trip(value):
    assert codecs.MSGPACK.decode(codecs.MSGPACK.encode(value)) == value


@given(st.dictionaries(st.text(max_size=8), json_values, min_size=0, max_size=6))
def test_every_map_is_detected_in_both_formats(value):
    assert codecs.detect(codecs.JSON.encode(value)) is codecs.JSON
    assert codecs.detect(codecs.MSGPACK.encode(value)) is codecs.MSGPACK


@given(st.binary(min_size=1))
def test_decode_raises_only_decode_error(data):
    for codec in (codecs.JSON, codecs.MSGPACK):
        try:
            codec.decode(data)
        except codecs.DecodeError:
            pass


@pytest.mark.parametrize("value", [{"b": b"x"}, {"n": 2**64}, {1: "int key"}, {"s": {1, 2}}, {"o": object()}])
def test_json_refuses_what_it_cannot_carry(value):
    with pytest.raises(codecs.EncodeError):
        codecs.JSON.encode(value)


@pytest.mark.parametrize("value", [{"n": 2**64}, {"n": -(2**63) - 1}, {"s": {1, 2}}, {"o": object()}])
def test_msgpack_refuses_what_it_cannot_carry(value):
    with pytest.raises(codecs.EncodeError):
        codecs.MSGPACK.encode(value)
    # a failed encode must not poison the next one on this thread
    assert codecs.MSGPACK.decode(codecs.MSGPACK.encode({"ok": 1})) == {"ok": 1}


def test_nan_in_json_output_becomes_null_and_survives_msgpack():
    assert codecs.JSON.decode(codecs.JSON.encode({"x": math.nan})) == {"x": None}
    assert math.isnan(codecs.MSGPACK.decode(codecs.MSGPACK.encode({"x": math.nan}))["x"])


@pytest.mark.parametrize("depth,ok", [(1024, True), (1025, False)])
def test_nesting_limit_is_1024_in_both_formats(depth, ok):
    json_doc = b"[" * depth + b"]" * depth
    msgpack_doc = b"\x91" * (depth - 1) + b"\x90"
    for codec, doc in ((codecs.JSON, json_doc), (codecs.MSGPACK, msgpack_doc)):
        if ok:
            codec.decode(doc)
        else:
            with pytest.raises(codecs.DecodeError):
                codec.decode(doc)


@pytest.mark.parametrize("first,expected", [
    (b"{", "json"), (b" ", "json"), (b"\n", "json"), (b"\t", "json"), (b"\r", "json"),
    (b"\x80", "msgpack"), (b"\x8f", "msgpack"), (b"\xde", "msgpack"), (b"\xdf", "msgpack"),
    (b"[", None), (b"\x90", None), (b"\xdc", None), (b"a", None), (b"\x00", None),
])
def test_detect(first, expected):
    codec = codecs.detect(first + b"rest")
    assert (codec.name if codec else None) == expected
