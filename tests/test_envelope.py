"""Envelope checks: valid requests parse, every malformed field is a protocol error with the id kept."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import codecs
from bridge.envelope import FIELDS, parse_request, recover_id, valid_id
from bridge.contract import protocol_dir
from bridge.errors import BridgeError

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(min_size=1, max_size=128)
requests = st.fixed_dictionaries(
    {"id": ids, "command": st.text(min_size=1, max_size=128)},
    optional={
        "args": st.none() | st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
        "session_id": st.none() | st.text(min_size=1, max_size=256),
        "timeout_ms": st.none() | st.integers(1, 86_400_000),
        "meta": st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=64),
        "notify": st.none() | st.lists(st.text(min_size=1, max_size=64), max_size=8),
    },
)
junk = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300) | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=70) | st.lists(st.text(max_size=70), max_size=10)


@given(requests)
def test_valid_requests_parse(doc):
    request = parse_request(doc)
    assert request.id == doc["id"] and request.command == doc["command"]
    assert request.args == (doc.get("args") or {})
    assert request.meta == (doc.get("meta") or {})
    assert request.notify == frozenset(doc.get("notify") or ())
    assert (request.session_id, request.timeout_ms) == (doc.get("session_id"), doc.get("timeout_ms"))


def _schema():
    with open(os.path.join(protocol_dir(), "schemas", "request.schema.json")) as f:
        return jsonschema.Draft202012Validator(json.load(f))


REQUEST_SCHEMA = _schema()


def _integral_float(value) -> bool:
    # JSON Schema counts 1.0 as an integer; the wire (and this parser) do not.
    return isinstance(value, float) and value.is_integer()


@given(requests, st.sampled_from(sorted(FIELDS)), junk)
def test_parser_and_published_schema_agree_on_every_field(doc, field, value):
    """Any value in any field: parse_request accepts it exactly when request.schema.json does."""
    doc = {**doc, field: value}
    if _integral_float(value):
        return
    schema_ok = REQUEST_SCHEMA.is_valid(doc)
    try:
        parse_request(doc)
    except BridgeError as exc:
        assert not schema_ok, f"schema accepts what the parser refused: {exc}"
        assert exc.category == "protocol"
        if field != "id":
            assert exc.details.get("id") == doc["id"], "the id must be kept for the reply"
    else:
        assert schema_ok, "the parser accepted what the schema refuses"


@given(requests, st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS), junk)
def test_unknown_fields_are_refused(doc, key, value):
    with pytest.raises(BridgeError) as info:
        parse_request({**doc, key: value})
    assert info.value.code == "unknown_field" and info.value.details["id"] == doc["id"]


@given(junk)
def test_non_maps_are_refused(value):
    if isinstance(value, dict):
        return
    with pytest.raises(BridgeError) as info:
        parse_request(value)
    assert info.value.code == "not_a_map"


@given(requests, st.sampled_from(["json", "msgpack"]), st.integers(min_value=0, max_value=400))
def test_recover_id_never_guesses(doc, fmt, cut):
    """From any prefix of an encoded request, recover_id returns the true id or None, never another value."""
    payload = codecs.get(fmt).encode(doc)
    found = recover_id(payload[:cut], fmt)
    assert found is None or found == doc["id"]


@given(ids, st.sampled_from(["json", "msgpack"]))
def test_recover_id_finds_a_leading_id(rid, fmt):
    payload = codecs.get(fmt).encode({"id": rid, "command": "echo", "args": {"pad": "x" * 100}})
    assert recover_id(payload[:-5], fmt) == rid


@given(st.sampled_from(["json", "msgpack"]))
def test_recover_id_ignores_nested_ids(fmt):
    payload = codecs.get(fmt).encode({"args": {"id": 5}, "command": "x"})
    assert recover_id(payload[:-2], fmt) is None


def test_valid_id():
    assert valid_id(0) and valid_id(-(2**63)) and valid_id(2**63 - 1) and valid_id("x" * 128)
    assert not any(valid_id(v) for v in (True, 1.0, "", "x" * 129, 2**63, None, [1], {"a": 1}))


BOUNDARIES = [
    ("id", 2**63 - 1, True), ("id", 2**63, False), ("id", -(2**63), True), ("id", -(2**63) - 1, False),
    ("id", "x" * 128, True), ("id", "x" * 129, False),
    ("command", "c" * 128, True), ("command", "c" * 129, False),
    ("session_id", "s" * 256, True), ("session_id", "s" * 257, False),
    ("timeout_ms", 1, True), ("timeout_ms", 0, False),
    ("timeout_ms", 86_400_000, True), ("timeout_ms", 86_400_001, False),
    ("meta", {str(i): i for i in range(64)}, True), ("meta", {str(i): i for i in range(65)}, False),
    ("notify", ["e"] * 8, True), ("notify", ["e"] * 9, False),
    ("notify", ["e" * 64], True), ("notify", ["e" * 65], False), ("notify", [""], False),
]


@pytest.mark.parametrize("field,value,valid", BOUNDARIES, ids=[f"{f}-{'ok' if v else 'bad'}" for f, _, v in BOUNDARIES])
def test_limits_at_their_boundaries(field, value, valid):
    doc = {"id": 1, "command": "ping", field: value}
    assert REQUEST_SCHEMA.is_valid(doc) is valid
    if valid:
        parse_request(doc)
    else:
        with pytest.raises(BridgeError):
            parse_request(doc)
