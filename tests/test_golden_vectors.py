"""Replays every golden vector of protocol/vectors against the codecs and a real worker."""

from __future__ import annotations

import pytest

from bridge import codecs
from bridge.framing import FrameDecoder, encode_frame
from bridge.devtools.framecat import to_readable
from tests.support.schemas import VALIDATORS
from tests.support.vectors import flat_error, from_readable, ids, load, matches

CODEC = load("codec.json")
BAD = load("bad_frames.json")
EXCHANGES = load("exchanges.json")
CALLBACK_FRAMES = load("callbacks.json", "frames")
CALLBACK_EXCHANGES = load("callbacks.json")
LM_CALL_FRAMES = load("lm_calls.json", "frames")
LM_CALL_EXCHANGES = load("lm_calls.json")
LM_CALL_DSPY_EXCHANGES = load("lm_calls.json", "dspy_cases")
LEASE_FRAMES = load("leases.json", "frames")
LEASE_EXCHANGES = load("leases.json")
SHARED = [c for c in BAD if not ({"worker_args", "end_input", "exit_code"} & set(c))]
SPECIAL = [c for c in BAD if c not in SHARED]


@pytest.mark.parametrize("case", CODEC, ids=ids(CODEC))
def test_codec_vector(case):
    codec = codecs.get(case["format"])
    payload = bytes.fromhex(case["payload_hex"])
    assert to_readable(codec.decode(payload)) == case["value"]
    encoded = codec.encode(from_readable(case["value"]))
    assert to_readable(codec.decode(encoded)) == case["value"]
    assert codecs.detect(payload) is codec
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex(case["frame_hex"]))
    assert list(decoder.frames()) == [payload]
    assert encode_frame(payload).hex() == case["frame_hex"]


@pytest.mark.parametrize("case", CALLBACK_FRAMES, ids=ids(CALLBACK_FRAMES))
def test_callback_frame_vector(case):
    """Protocol 1.1: each frame of the callback conversation decodes to its value, which its schema accepts."""
    codec = codecs.get(case["format"])
    value = codec.decode(bytes.fromhex(case["payload_hex"]))
    assert to_readable(value) == case["value"]
    assert not list(VALIDATORS[case["schema"]].iter_errors(case["value"]))
    if case["value"].get("command") == "callback_result":
        assert not list(VALIDATORS["callback_result"].iter_errors(case["value"]["args"]))


@pytest.mark.parametrize("case", LM_CALL_FRAMES + LEASE_FRAMES, ids=ids(LM_CALL_FRAMES + LEASE_FRAMES))
def test_lm_call_frame_vector(case):
    """Protocol 1.2 and 1.3: each frame of the admitted, retried (leased) LM calls decodes to its value, which its
    schemas accept."""
    codec = codecs.get(case["format"])
    value = codec.decode(bytes.fromhex(case["payload_hex"]))
    assert to_readable(value) == case["value"]
    assert not list(VALIDATORS[case["schema"]].iter_errors(case["value"]))
    data = case["value"].get("data") or {}
    if case["value"].get("event") == "lm_call":
        assert not list(VALIDATORS["lm_call"].iter_errors(data))
    if data.get("name") == "portbridge.admit":
        assert not list(VALIDATORS["admit"].iter_errors(data["args"]))
    if case["value"].get("command") == "callback_result" and "result" in case["value"]["args"]:
        assert not list(VALIDATORS["admit_result"].iter_errors(case["value"]["args"]["result"]))


def test_admit_result_schema_refuses_leases_a_worker_ignores():
    for lease in ({"starts": 0, "valid_ms": 500}, {"starts": 2}, {"starts": 2, "valid_ms": 60_001},
                  {"starts": 1001, "valid_ms": 5}, {"starts": 2, "valid_ms": 5, "tokens": -1}, {"starts": "2", "valid_ms": 5}):
        assert list(VALIDATORS["admit_result"].iter_errors({"admitted": True, "lease": lease})), lease
    assert not list(VALIDATORS["admit_result"].iter_errors({"admitted": True, "waited_ms": 3}))


def test_event_schema_checks_lm_call_and_admit_frames():
    """The event schema itself refuses a malformed lm_call and a malformed admission request."""
    lm_call = next(c["value"] for c in LM_CALL_FRAMES if c["name"] == "lm_call_done_json")
    admit = next(c["value"] for c in LM_CALL_FRAMES if c["name"] == "admit_event_json")
    bad = [
        {**lm_call, "data": {**lm_call["data"], "cost_usd": "0.1"}},
        {**lm_call, "data": {k: v for k, v in lm_call["data"].items() if k != "cached"}},
        {**lm_call, "data": {**lm_call["data"], "error": {"category": "nope", "code": "x", "message": "",
                                                          "retry_after_s": None}}},
        {**lm_call, "id": None},
        {**admit, "data": {**admit["data"], "args": {"model": "m", "limits": {}, "estimated_tokens": 1}}},
        {**admit, "data": {**admit["data"], "args": {"model": "m", "limits": {"burst": 2}, "estimated_tokens": 1}}},
    ]
    for frame in bad:
        assert list(VALIDATORS["event"].iter_errors(frame)), frame


def test_callback_result_schema_refuses_what_the_worker_refuses():
    for args in ({"callback_id": "c"}, {"callback_id": "c", "result": 1, "error": {"message": "x"}},
                 {"result": 1}, {"callback_id": "c", "error": {"category": "execution"}},
                 {"callback_id": "c", "error": {"message": "x", "category": "oops"}}):
        assert list(VALIDATORS["callback_result"].iter_errors(args)), args


@pytest.mark.parametrize("case", EXCHANGES + CALLBACK_EXCHANGES + LM_CALL_EXCHANGES + LEASE_EXCHANGES,
                         ids=ids(EXCHANGES + CALLBACK_EXCHANGES + LM_CALL_EXCHANGES + LEASE_EXCHANGES))
def test_exchange_vector(raw, case):
    worker = raw()
    worker.send(encode_frame(bytes.fromhex(case["payload_hex"])))
    reply = worker.read_reply()
    assert matches(case["expect"], reply), reply
    assert reply["id"] == case["request"]["id"]


def test_lm_call_dspy_exchanges_in_order_to_one_worker(raw):
    """Protocol 1.2's DSPy cases (rate_limit, scripted, per-call lm), in order, to one worker with DSPy."""
    worker = raw()
    for case in LM_CALL_DSPY_EXCHANGES:
        worker.send(encode_frame(bytes.fromhex(case["payload_hex"])))
        reply = worker.read_reply(timeout=30)
        assert matches(case["expect"], reply), (case["name"], reply)


def test_bad_frames_one_worker_keeps_serving(raw):
    """Every plain bad-frame vector, in turn, to ONE worker; it answers each and still pings."""
    worker = raw()
    for case in SHARED:
        worker.send(bytes.fromhex(case["stream_hex"]))
        for expected in case["replies"]:
            reply = worker.read_reply()
            assert matches(flat_error(expected), reply), (case["name"], reply)
        assert worker.request({"id": "after", "command": "ping"})["success"], case["name"]


@pytest.mark.parametrize("case", SPECIAL, ids=ids(SPECIAL))
def test_bad_frame_special(raw, case):
    worker = raw(*case.get("worker_args", []))
    worker.send(bytes.fromhex(case["stream_hex"]))
    if case.get("end_input"):
        worker.close_stdin()
    for expected in case["replies"]:
        reply = worker.read_reply()
        assert matches(flat_error(expected), reply), (case["name"], reply)
    if "exit_code" in case:
        assert worker.read_frame() is None
        assert worker.wait() == case["exit_code"]
    else:
        fmt = "msgpack" if "msgpack" in case.get("worker_args", []) else "json"
        assert worker.request({"id": "after", "command": "ping"}, fmt=fmt)["success"]
