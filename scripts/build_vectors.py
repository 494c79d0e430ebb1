"""Builds the golden vectors in protocol/vectors from the readable cases below.

Run it only when the protocol changes (``python scripts/build_vectors.py``),
then review the diff of the JSON files: the JSON files are the vectors; every
test suite replays them and none runs this script.

Values in the files are JSON; what JSON cannot hold is tagged:
``{"$bytes": "<base64>"}``, ``{"$ext": [code, "<base64>"]}``,
``{"$timestamp": [seconds, nanoseconds]}``, ``{"$float": "nan" | "inf" | "-inf"}``.
"""

from __future__ import annotations

import json
import os
import struct

import msgpack
import orjson

from bridge.devtools.framecat import from_readable

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "protocol", "vectors")
B64_FF00 = {"$bytes": "/wA="}  # b"\xff\x00"


def pack(value) -> bytes:
    return msgpack.packb(from_readable(value), use_bin_type=True)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def jbytes(value) -> bytes:
    return orjson.dumps(value)


# -- codec.json: payload bytes <-> value, both formats -----------------------------

CODEC_VALUES = [
    ("ping_request", {"id": 1, "command": "ping"}),
    ("full_request", {
        "id": "req-7", "command": "execute_program",
        "args": {"program_id": "qa", "inputs": {"question": "What is 2+2?"}},
        "session_id": "s-42", "timeout_ms": 30000, "meta": {"trace_id": "t-1"},
    }),
    ("success_reply", {"id": 1, "success": True, "result": {"pong": True, "pid": 4242}, "meta": {"elapsed_us": 35}}),
    ("error_reply", {
        "id": 2, "success": False,
        "error": {"category": "validation", "code": "invalid_args", "message": "args.ms: is required",
                  "severity": "low", "recovery": "abandon", "retryable": False,
                  "details": {"path": "args.ms", "reason": "required"}},
        "meta": {"elapsed_us": 12},
    }),
    ("error_reply_null_id", {
        "id": None, "success": False,
        "error": {"category": "protocol", "code": "empty_frame", "message": "a frame of length 0 carries no request",
                  "severity": "medium", "recovery": "abandon", "retryable": False, "details": {}},
    }),
    ("chunk_event", {"id": 9, "event": "chunk", "data": {"field": "answer", "text": "Par"}}),
    ("progress_event", {"id": 9, "event": "progress", "data": {"done": 3, "total": 20}}),
    ("ready_event", {"id": None, "event": "ready", "data": {
        "protocol": 1, "pid": 4242, "version": "0.1.0", "formats": ["json", "msgpack"], "format": "auto",
        "commands": ["ping", "echo"], "limits": {"max_frame_bytes": 67108864}}}),
    ("unicode", {"id": 3, "command": "echo", "args": {
        "text": "héllo wörld ✓ 漢字 🚀", "escapes": "quote\" backslash\\ newline\n tab\t nul\u0000",
        "ключ": "значение"}}),
    ("numbers", {"id": 4, "command": "echo", "args": {
        "zero": 0, "neg": -1, "i32max": 2147483647, "i64max": 9223372036854775807,
        "i64min": -9223372036854775808, "u64max": 18446744073709551615,
        "float": 1.5, "neg_float": -0.25, "small": 1e-300, "big": 1.7976931348623157e308}}),
    ("scalars_and_empties", {"id": 5, "command": "echo", "args": {
        "t": True, "f": False, "n": None, "empty_map": {}, "empty_list": [], "empty_string": ""}}),
    ("nesting", {"id": 6, "command": "echo", "args": {"a": [[1, [2, [3, {"b": [{"c": {}}]}]]]]}}),
    ("string_id", {"id": "a" * 128, "command": "ping"}),
]

MSGPACK_ONLY_VALUES = [
    ("binary", {"id": 10, "command": "echo", "args": {"blob": B64_FF00, "empty": {"$bytes": ""}}}),
    ("reply_with_binary", {"id": 10, "success": True, "result": {"blob": B64_FF00}, "meta": {"elapsed_us": 1}}),
]


def codec_cases() -> list[dict]:
    cases = []
    for name, value in CODEC_VALUES:
        payload = jbytes(value)
        cases.append({"name": f"{name}_json", "format": "json", "payload_hex": payload.hex(),
                      "frame_hex": frame(payload).hex(), "value": value})
    for name, value in CODEC_VALUES + MSGPACK_ONLY_VALUES:
        payload = pack(value)
        cases.append({"name": f"{name}_msgpack", "format": "msgpack", "payload_hex": payload.hex(),
                      "frame_hex": frame(payload).hex(), "value": value})
    return cases


# -- bad_frames.json: streams that are not valid requests -----------------------------

def err(code, rid=None, category="protocol"):
    return {"id": rid, "success": False, "category": category, "code": code}


def ok(rid):
    return {"id": rid, "success": True}


def raw_json(text: str) -> bytes:
    return frame(text.encode("utf-8"))


BAD_FRAMES = [
    # name, stream bytes, expected replies (in order), extra worker args, end of input, exit code
    ("empty_frame", frame(b""), [err("empty_frame")]),
    ("unknown_format_text", raw_json("hello"), [err("unknown_format")]),
    ("unknown_format_json_array", raw_json("[1, 2]"), [err("unknown_format")]),
    ("unknown_format_msgpack_array", frame(pack([1, 2])), [err("unknown_format")]),
    ("json_not_a_map", raw_json(" [1, 2]"), [err("not_a_map")]),
    ("invalid_json", raw_json("{nope"), [err("undecodable")]),
    ("invalid_json_id_recovered", raw_json('{"id": 7, "command": "ping", "args": {bad'), [err("undecodable", 7)]),
    ("invalid_json_nested_id_not_recovered", raw_json('{"args": {"id": 8}, "command": ping}'), [err("undecodable")]),
    ("invalid_json_trailing_garbage", raw_json('{"id": 11, "command": "ping"} x'), [err("undecodable", 11)]),
    ("json_nan_literal", raw_json('{"id": 12, "command": "echo", "args": {"x": NaN}}'), [err("undecodable", 12)]),
    ("json_invalid_utf8", frame(b'{"id": 13, "command": "echo", "args": {"s": "\xff\xfe"}}'),
     [err("undecodable", 13)]),
    ("msgpack_truncated_map_id_recovered", frame(bytes.fromhex("82a2696407")), [err("undecodable", 7)]),
    ("msgpack_invalid_utf8", frame(bytes.fromhex("82a26964") + b"\x0e" + bytes.fromhex("a7636f6d6d616e64a2fffe")),
     [err("undecodable", 14)]),
    ("msgpack_trailing_bytes", frame(pack({"id": 15, "command": "ping"}) + b"\x00"), [err("undecodable", 15)]),
    ("json_too_deep", raw_json('{"id": 16, "command": "echo", "args": {"x": ' + "[" * 1030 + "]" * 1030 + "}}"),
     [err("undecodable", 16)]),
    ("missing_id", raw_json('{"command": "ping"}'), [err("invalid_id")]),
    ("float_id", raw_json('{"id": 1.5, "command": "ping"}'), [err("invalid_id")]),
    ("bool_id", raw_json('{"id": true, "command": "ping"}'), [err("invalid_id")]),
    ("empty_string_id", raw_json('{"id": "", "command": "ping"}'), [err("invalid_id")]),
    ("list_id", raw_json('{"id": [1], "command": "ping"}'), [err("invalid_id")]),
    ("too_long_id", raw_json('{"id": "' + "x" * 129 + '", "command": "ping"}'), [err("invalid_id")]),
    ("int65_id", raw_json('{"id": 9223372036854775808, "command": "ping"}'), [err("invalid_id")]),
    ("missing_command", raw_json('{"id": 2}'), [err("invalid_command", 2)]),
    ("empty_command", raw_json('{"id": 2, "command": ""}'), [err("invalid_command", 2)]),
    ("unknown_field", raw_json('{"id": 3, "command": "ping", "sesion_id": "s"}'), [err("unknown_field", 3)]),
    ("args_not_a_map", raw_json('{"id": 4, "command": "echo", "args": [1]}'), [err("invalid_args", 4)]),
    ("empty_session_id", raw_json('{"id": 5, "command": "ping", "session_id": ""}'), [err("invalid_session_id", 5)]),
    ("int_session_id", raw_json('{"id": 5, "command": "ping", "session_id": 5}'), [err("invalid_session_id", 5)]),
    ("zero_timeout", raw_json('{"id": 6, "command": "ping", "timeout_ms": 0}'), [err("invalid_timeout", 6)]),
    ("string_timeout", raw_json('{"id": 6, "command": "ping", "timeout_ms": "10"}'), [err("invalid_timeout", 6)]),
    ("float_timeout", raw_json('{"id": 6, "command": "ping", "timeout_ms": 1.5}'), [err("invalid_timeout", 6)]),
    ("meta_not_a_map", raw_json('{"id": 7, "command": "ping", "meta": "t"}'), [err("invalid_meta", 7)]),
    ("unknown_command", raw_json('{"id": 8, "command": "no_such_command"}'),
     [err("unknown_command", 8, "not_found")]),
    ("args_fail_schema", raw_json('{"id": 9, "command": "sleep", "args": {"ms": "x"}}'),
     [err("invalid_args", 9, "validation")]),
    ("duplicate_id_in_flight",
     raw_json('{"id": 5, "command": "sleep", "args": {"ms": 300}}') + raw_json('{"id": 5, "command": "ping"}'),
     [err("duplicate_id", 5), ok(5)]),
    ("bad_frame_between_good_ones",
     raw_json('{"id": 1, "command": "ping"}') + frame(b"") + raw_json('{"id": 2, "command": "ping"}'),
     [ok(1), err("empty_frame"), ok(2)]),
]

# Cases that need worker options or end the stream.
BAD_FRAMES_SPECIAL = [
    {"name": "oversized_json_id_recovered", "worker_args": ["--max-frame-bytes", "64"],
     "stream": raw_json('{"id": 21, "command": "echo", "args": {"pad": "' + "x" * 200 + '"}}'),
     "replies": [err("frame_too_large", 21)]},
    {"name": "oversized_msgpack_id_recovered", "worker_args": ["--max-frame-bytes", "64"],
     "stream": frame(pack({"id": 22, "command": "echo", "args": {"pad": "x" * 200}})),
     "replies": [err("frame_too_large", 22)]},
    {"name": "oversized_id_after_payload_not_recovered", "worker_args": ["--max-frame-bytes", "64"],
     "stream": raw_json('{"args": {"pad": "' + "x" * 5000 + '"}, "command": "echo", "id": 23}'),
     "replies": [err("frame_too_large")]},
    {"name": "pinned_json_rejects_msgpack", "worker_args": ["--format", "json"],
     "stream": frame(pack({"id": 24, "command": "ping"})), "replies": [err("undecodable")]},
    {"name": "pinned_msgpack_rejects_json", "worker_args": ["--format", "msgpack"],
     "stream": raw_json('{"id": 25, "command": "ping"}'), "replies": [err("undecodable")]},
    {"name": "truncated_frame_at_end_of_input", "stream": bytes.fromhex("0000000a") + b'{"id"',
     "end_input": True, "replies": [err("truncated_frame")], "exit_code": 0},
    {"name": "truncated_header_at_end_of_input", "stream": bytes.fromhex("0000"),
     "end_input": True, "replies": [err("truncated_frame")], "exit_code": 0},
    {"name": "unframed_text_desyncs", "stream": b"hello, this is not a frame\n",
     "replies": [err("stream_desync")], "exit_code": 3},
]


def bad_frame_cases() -> list[dict]:
    cases = [{"name": n, "stream_hex": s.hex(), "replies": r} for n, s, r in BAD_FRAMES]
    for spec in BAD_FRAMES_SPECIAL:
        case = {"name": spec["name"], "stream_hex": spec["stream"].hex(), "replies": spec["replies"]}
        for key in ("worker_args", "end_input", "exit_code"):
            if key in spec:
                case[key] = spec[key]
        cases.append(case)
    return cases


# -- exchanges.json: one request, the reply it must produce ---------------------------

EXCHANGES = [
    # name, format, request, expected (a subset of the reply: every key given must match)
    ("ping", "json", {"id": 1, "command": "ping"}, {"id": 1, "success": True, "result": {"pong": True}}),
    ("ping_msgpack", "msgpack", {"id": 1, "command": "ping"}, {"id": 1, "success": True, "result": {"pong": True}}),
    ("meta_echoed", "json", {"id": "m", "command": "ping", "meta": {"trace_id": "t-1", "n": 2}},
     {"id": "m", "success": True, "meta": {"trace_id": "t-1", "n": 2}}),
    ("echo_json", "json", {"id": 2, "command": "echo", "args": CODEC_VALUES[8][1]["args"]},
     {"id": 2, "success": True, "result": CODEC_VALUES[8][1]["args"]}),
    ("echo_numbers_msgpack", "msgpack", {"id": 3, "command": "echo", "args": CODEC_VALUES[9][1]["args"]},
     {"id": 3, "success": True, "result": CODEC_VALUES[9][1]["args"]}),
    ("echo_bytes_msgpack", "msgpack", {"id": 4, "command": "echo", "args": {"blob": B64_FF00}},
     {"id": 4, "success": True, "result": {"blob": B64_FF00}}),
    ("echo_ext_and_timestamp_msgpack", "msgpack",
     {"id": 5, "command": "echo", "args": {"ext": {"$ext": [5, "AQI="]}, "ts": {"$timestamp": [1700000000, 5]}}},
     {"id": 5, "success": True, "result": {"ext": {"$ext": [5, "AQI="]}, "ts": {"$timestamp": [1700000000, 5]}}}),
    ("echo_nan_msgpack", "msgpack", {"id": 6, "command": "echo", "args": {"x": {"$float": "nan"}}},
     {"id": 6, "success": True, "result": {"x": {"$float": "nan"}}}),
    ("echo_no_args", "json", {"id": 7, "command": "echo"}, {"id": 7, "success": True, "result": {}}),
    ("sleep", "json", {"id": 8, "command": "sleep", "args": {"ms": 1}},
     {"id": 8, "success": True, "result": {"slept_ms": 1}}),
    ("sleep_past_deadline", "json", {"id": 9, "command": "sleep", "args": {"ms": 5000}, "timeout_ms": 50},
     {"id": 9, "success": False, "error": {"category": "timeout", "code": "deadline_exceeded",
                                           "severity": "high", "recovery": "backoff_retry", "retryable": True}}),
    ("sleep_unknown_arg", "json", {"id": 10, "command": "sleep", "args": {"ms": 1, "extra": 1}},
     {"id": 10, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                            "details": {"path": "args.extra", "reason": "additionalProperties"}}}),
    ("sleep_missing_arg", "json", {"id": 11, "command": "sleep", "args": {}},
     {"id": 11, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                            "details": {"path": "args.ms", "reason": "required"}}}),
    ("cancel_unknown", "json", {"id": 12, "command": "cancel", "args": {"request_id": 999}},
     {"id": 12, "success": True, "result": {"request_id": 999, "cancelled": False, "state": "unknown"}}),
    ("cancel_self", "json", {"id": 13, "command": "cancel", "args": {"request_id": 13}},
     {"id": 13, "success": False, "error": {"category": "validation", "code": "cancel_self"}}),
    ("end_unknown_session", "json", {"id": 14, "command": "end_session", "args": {"session_id": "nope"}},
     {"id": 14, "success": False, "error": {"category": "not_found", "code": "unknown_session"}}),
    ("list_sessions_empty", "json", {"id": 15, "command": "list_sessions"},
     {"id": 15, "success": True, "result": {"sessions": [], "count": 0}}),
    ("health", "json", {"id": 16, "command": "health"},  # status: "starting" until backends registered
     {"id": 16, "success": True, "result": {"accepting": True, "in_flight": 0}}),
    ("ping_rejects_args", "json", {"id": 17, "command": "ping", "args": {"x": 1}},
     {"id": 17, "success": False, "error": {"category": "validation", "code": "invalid_args"}}),
    ("string_id_and_null_fields", "json",
     {"id": "abc", "command": "ping", "args": None, "session_id": None, "timeout_ms": None, "meta": None},
     {"id": "abc", "success": True}),
]


def exchange_cases() -> list[dict]:
    return [{"name": n, "format": f, "request": req, "payload_hex": (jbytes(req) if f == "json" else pack(req)).hex(),
             "expect": exp} for n, f, req, exp in EXCHANGES]


# -- callbacks.json: protocol 1.1 ------------------------------------------------------

CALLBACK_CONVERSATION = [  # (name, schema, value): one callback, in the order the frames go
    ("ready_1_1", "event", {"id": None, "event": "ready", "data": {
        "protocol": 1, "protocol_minor": 1, "features": ["callbacks"], "pid": 4242, "version": "0.1.0",
        "formats": ["json", "msgpack"], "format": "auto", "commands": ["callback_result", "ping"],
        "limits": {"max_frame_bytes": 67108864, "max_callbacks": 1024}}}),
    ("request_with_a_tool", "request", {"id": 7, "command": "execute_program", "timeout_ms": 30000,
                                        "args": {"program_id": "agent", "inputs": {"question": "Capital of France?"}}}),
    ("callback_event", "event", {"id": 7, "event": "callback", "data": {
        "callback_id": "cb-1", "name": "search", "args": {"query": "capital of France"}, "timeout_ms": 29120}}),
    ("callback_result", "request", {"id": 8, "command": "callback_result",
                                    "args": {"callback_id": "cb-1", "result": {"hits": ["Paris"]}}}),
    ("callback_result_reply", "response", {"id": 8, "success": True,
                                           "result": {"callback_id": "cb-1", "accepted": True},
                                           "meta": {"elapsed_us": 9}}),
    ("callback_event_no_deadline", "event", {"id": 7, "event": "callback", "data": {
        "callback_id": "cb-2", "name": "search", "args": {"query": "population of Paris"}, "timeout_ms": None}}),
    ("callback_error", "request", {"id": 9, "command": "callback_result", "args": {
        "callback_id": "cb-2", "error": {"message": "the search service is down", "category": "execution"}}}),
    ("final_reply", "response", {"id": 7, "success": False, "error": {
        "category": "execution", "code": "callback_failed",
        "message": "callback 'search' failed: the search service is down", "severity": "medium",
        "recovery": "abandon", "retryable": False, "details": {"callback": "search"}}, "meta": {"elapsed_us": 5210}}),
]

CALLBACK_EXCHANGES = [  # (name, format, request, expect), replayed against a core worker
    ("describe_lists_callback_result", "json", {"id": 1, "command": "describe"},
     {"id": 1, "success": True, "result": {"protocol": 1,
                                            "commands": {"callback_result": {"control": True, "backend": "core"}}}}),
    ("unknown_callback", "json", {"id": 2, "command": "callback_result", "args": {"callback_id": "cb-9", "result": 1}},
     {"id": 2, "success": False, "error": {"category": "not_found", "code": "unknown_callback",
                                           "details": {"callback_id": "cb-9"}}}),
    ("unknown_callback_error_msgpack", "msgpack",
     {"id": 3, "command": "callback_result", "args": {"callback_id": "cb-9", "error": {"message": "boom"}}},
     {"id": 3, "success": False, "error": {"category": "not_found", "code": "unknown_callback"}}),
    ("missing_callback_id", "json", {"id": 4, "command": "callback_result", "args": {"result": 1}},
     {"id": 4, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"path": "args.callback_id", "reason": "required"}}}),
    ("neither_result_nor_error", "json", {"id": 5, "command": "callback_result", "args": {"callback_id": "cb-1"}},
     {"id": 5, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"reason": "oneOf"}}}),
    ("both_result_and_error", "json",
     {"id": 6, "command": "callback_result",
      "args": {"callback_id": "cb-1", "result": 1, "error": {"message": "x"}}},
     {"id": 6, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"reason": "oneOf"}}}),
    ("error_without_message", "json",
     {"id": 7, "command": "callback_result", "args": {"callback_id": "cb-1", "error": {"category": "execution"}}},
     {"id": 7, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"path": "args.error.message", "reason": "required"}}}),
    ("error_of_an_unknown_category", "json",
     {"id": 8, "command": "callback_result",
      "args": {"callback_id": "cb-1", "error": {"message": "x", "category": "oops"}}},
     {"id": 8, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"path": "args.error.category", "reason": "enum"}}}),
    ("callback_id_not_a_string", "json", {"id": 9, "command": "callback_result", "args": {"callback_id": 5,
                                                                                          "result": 1}},
     {"id": 9, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                           "details": {"path": "args.callback_id", "reason": "type"}}}),
]


def frames_of(conversation) -> list[dict]:
    """A conversation's frames (name, schema, value) in both formats, each with its payload's bytes."""
    return [{"name": f"{n}_{f}", "schema": schema, "format": f, "value": value,
             "payload_hex": (jbytes(value) if f == "json" else pack(value)).hex()}
            for f in ("json", "msgpack") for n, schema, value in conversation]


# -- lm_calls.json: protocol 1.2 --------------------------------------------------------

RATE_LIMIT = {"requests_per_minute": 600, "tokens_per_minute": 200000}
ADMIT_ARGS = {"model": "openai/gpt-4o-mini", "limits": RATE_LIMIT, "estimated_tokens": 431}
LM_CALL_CONVERSATION = [  # (name, schema, value): one rate-limited call, retried once after a 429
    ("ready_1_2", "event", {"id": None, "event": "ready", "data": {
        "protocol": 1, "protocol_minor": 2, "features": ["callbacks", "lm_calls"], "pid": 4242, "version": "0.1.0",
        "formats": ["json", "msgpack"], "format": "auto", "commands": ["callback_result", "ping"],
        "limits": {"max_frame_bytes": 67108864, "max_callbacks": 1024}}}),
    ("configure_lm_with_rate_limit", "request", {"id": 1, "command": "configure_lm", "session_id": "s-1", "args": {
        "model": "openai/gpt-4o-mini", "api_key": "sk-...", "rate_limit": RATE_LIMIT}}),
    ("execute_with_notify", "request", {"id": 7, "command": "execute_program", "session_id": "s-1",
                                        "timeout_ms": 30000, "notify": ["lm_call"],
                                        "args": {"program_id": "qa", "inputs": {"question": "Capital of France?"},
                                                 "lm": {"temperature": 0.7, "max_tokens": 200}}}),
    ("admit_event", "event", {"id": 7, "event": "callback", "data": {
        "callback_id": "cb-1", "name": "portbridge.admit", "args": ADMIT_ARGS, "timeout_ms": 29870}}),
    ("admitted", "request", {"id": 8, "command": "callback_result",
                             "args": {"callback_id": "cb-1", "result": {"admitted": True}}}),
    ("admitted_reply", "response", {"id": 8, "success": True, "result": {"callback_id": "cb-1", "accepted": True},
                                    "meta": {"elapsed_us": 7}}),
    ("lm_call_rate_limited", "event", {"id": 7, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None,
        "duration_us": 3100, "cached": False, "program_id": "qa",
        "error": {"category": "lm_rate_limit", "code": "rate_limited", "message": "Rate limit reached for requests.",
                  "retry_after_s": 2.0}}}),
    ("admit_event_again", "event", {"id": 7, "event": "callback", "data": {
        "callback_id": "cb-2", "name": "portbridge.admit", "args": ADMIT_ARGS, "timeout_ms": 27750}}),
    ("admitted_after_a_pause", "request", {"id": 9, "command": "callback_result",
                                           "args": {"callback_id": "cb-2", "result": {"admitted": True,
                                                                                      "waited_ms": 1980}}}),
    ("lm_call_done", "event", {"id": 7, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 182, "completion_tokens": 24, "cost_usd": 4.17e-05,
        "duration_us": 412000, "cached": False, "program_id": "qa", "error": None}}),
    ("final_reply", "response", {"id": 7, "success": True, "result": {
        "program_id": "qa", "outputs": {"answer": "Paris"}, "model": "openai/gpt-4o-mini",
        "usage": {"openai/gpt-4o-mini": {"lm_calls": 1, "prompt_tokens": 182, "completion_tokens": 24,
                                         "total_tokens": 206, "cost_usd": 4.17e-05}}}, "meta": {"elapsed_us": 2401877}}),
    ("admission_refused", "request", {"id": 10, "command": "callback_result", "args": {
        "callback_id": "cb-3", "error": {"message": "the request's deadline passed while queued", "category": "timeout"}}}),
    ("lm_call_cached", "event", {"id": 11, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None,
        "duration_us": 850, "cached": True, "program_id": None, "error": None}}),
]


def notify_case(name, rid, notify, ok_expected):
    request = {"id": rid, "command": "ping", "notify": notify}
    return (name, "json", request, {"id": rid, "success": True} if ok_expected else
            {"id": rid, "success": False, "error": {"category": "protocol", "code": "invalid_notify"}})


def invalid(rid, path, reason):
    return {"id": rid, "success": False, "error": {"category": "validation", "code": "invalid_args",
                                                   "details": {"path": path, "reason": reason}}}


LM_CALL_EXCHANGES = [  # (name, format, request, expect), each to a fresh core worker
    notify_case("notify_known_and_unknown_names", 2, ["lm_call", "an_event_of_the_future"], True),
    notify_case("notify_null", 3, None, True),
    notify_case("notify_empty_list", 4, [], True),
    notify_case("notify_not_a_list", 5, "lm_call", False),
    notify_case("notify_too_many", 6, ["e"] * 9, False),
    notify_case("notify_empty_name", 7, [""], False),
    notify_case("notify_name_too_long", 8, ["e" * 65], False),
    notify_case("notify_not_strings", 9, [1], False),
]

LM_CALL_DSPY_EXCHANGES = [  # (name, format, request, expect), in order to ONE worker with the DSPy backend
    ("rate_limit_zero", "json",
     {"id": 1, "command": "configure_lm", "args": {"model": "offline", "rate_limit": {"requests_per_minute": 0}}},
     invalid(1, "args.rate_limit.requests_per_minute", "minimum")),
    ("rate_limit_negative_tokens", "json",
     {"id": 2, "command": "configure_lm", "args": {"model": "offline", "rate_limit": {"tokens_per_minute": -5}}},
     invalid(2, "args.rate_limit.tokens_per_minute", "minimum")),
    ("rate_limit_not_an_integer", "json",
     {"id": 3, "command": "configure_lm", "args": {"model": "offline", "rate_limit": {"requests_per_minute": 1.5}}},
     invalid(3, "args.rate_limit.requests_per_minute", "type")),
    ("rate_limit_unknown_key", "json",
     {"id": 4, "command": "configure_lm",
      "args": {"model": "offline", "rate_limit": {"requests_per_minute": 60, "requests_per_second": 1}}},
     invalid(4, "args.rate_limit.requests_per_second", "additionalProperties")),
    ("rate_limit_burst_alone", "json",
     {"id": 5, "command": "configure_lm", "args": {"model": "offline", "rate_limit": {"burst": 3}}},
     invalid(5, "args.rate_limit", "anyOf")),
    ("rate_limit_accepted", "msgpack",
     {"id": 6, "command": "configure_lm", "session_id": "v-6",
      "args": {"model": "offline", "rate_limit": {"requests_per_minute": 60, "burst": 2}}},
     {"id": 6, "success": True, "result": {"model": "offline",
                                           "rate_limit": {"requests_per_minute": 60, "burst": 2}}}),
    ("scripted_without_answers", "json", {"id": 7, "command": "configure_lm", "args": {"model": "scripted"}},
     invalid(7, "args.answers", "required")),
    ("answers_for_another_model", "json",
     {"id": 8, "command": "configure_lm", "args": {"model": "offline", "answers": [{"answer": "x"}]}},
     invalid(8, "args.answers", "scripted_only")),
    ("too_many_answers", "json",
     {"id": 9, "command": "configure_lm", "args": {"model": "scripted", "answers": [{}] * 1001}},
     invalid(9, "args.answers", "maxItems")),
    ("answer_not_a_map", "json",
     {"id": 10, "command": "configure_lm", "args": {"model": "scripted", "answers": ["Paris"]}},
     invalid(10, "args.answers[0]", "type")),
    ("scripted_accepted", "json",
     {"id": 11, "command": "configure_lm", "session_id": "v-11",
      "args": {"model": "scripted", "answers": [{"answer": "Paris"}, {"answer": "Rome"}]}},
     {"id": 11, "success": True, "result": {"model": "scripted", "answers": 2, "scope": "session"}}),
    ("lm_option_unknown", "json",
     {"id": 12, "command": "execute_program", "args": {"program_id": "qa", "inputs": {}, "lm": {"seed": 1}}},
     invalid(12, "args.lm.seed", "additionalProperties")),
    ("lm_option_out_of_range", "json",
     {"id": 13, "command": "execute_program", "args": {"program_id": "qa", "inputs": {}, "lm": {"temperature": 3}}},
     invalid(13, "args.lm.temperature", "maximum")),
    ("lm_option_too_many_stops", "json",
     {"id": 14, "command": "execute_program",
      "args": {"program_id": "qa", "inputs": {}, "lm": {"stop": ["a", "b", "c", "d", "e"]}}},
     invalid(14, "args.lm.stop", "maxItems")),
]


# -- leases.json: protocol 1.3 --------------------------------------------------------

LEASED_ARGS = {"model": "openai/gpt-4o-mini", "limits": RATE_LIMIT, "estimated_tokens": 412}
LEASE_CONVERSATION = [  # (name, schema, value): an admission with a lease, and the calls started on it
    ("ready_1_3", "event", {"id": None, "event": "ready", "data": {
        "protocol": 1, "protocol_minor": 3, "features": ["callbacks", "lm_calls", "lm_leases"], "pid": 4242,
        "version": "0.1.0", "formats": ["json", "msgpack"], "format": "auto", "commands": ["callback_result", "ping"],
        "limits": {"max_frame_bytes": 67108864, "max_callbacks": 1024}}}),
    ("admit_event", "event", {"id": 7, "event": "callback", "data": {
        "callback_id": "cb-1", "name": "portbridge.admit", "args": LEASED_ARGS, "timeout_ms": 29870}}),
    # The call admitted now, and 2 more that may start within 500 ms of the event above, their
    # estimates together within 824 tokens.
    ("admitted_with_a_lease", "request", {"id": 8, "command": "callback_result", "args": {
        "callback_id": "cb-1", "result": {"admitted": True,
                                          "lease": {"starts": 2, "valid_ms": 500, "tokens": 824}}}}),
    ("lm_call_admitted", "event", {"id": 7, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 180, "completion_tokens": 22, "cost_usd": 4.1e-05,
        "duration_us": 398000, "cached": False, "program_id": "qa", "estimated_tokens": 412, "error": None}}),
    # Request 9's call started on the lease: no callback event before its lm_call.
    ("lm_call_leased", "event", {"id": 9, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 176, "completion_tokens": 30, "cost_usd": 4.3e-05,
        "duration_us": 405000, "cached": False, "program_id": "qa", "estimated_tokens": 409, "error": None}}),
    # A leased attempt refused by the provider: the lease is void, the retry asks again.
    ("lm_call_leased_429", "event", {"id": 10, "event": "lm_call", "data": {
        "model": "openai/gpt-4o-mini", "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None,
        "duration_us": 2900, "cached": False, "program_id": "qa", "estimated_tokens": 415,
        "error": {"category": "lm_rate_limit", "code": "rate_limited", "message": "Rate limit reached for requests.",
                  "retry_after_s": 1.5}}}),
    ("admit_event_after_the_429", "event", {"id": 10, "event": "callback", "data": {
        "callback_id": "cb-2", "name": "portbridge.admit", "args": {**LEASED_ARGS, "estimated_tokens": 415},
        "timeout_ms": 28100}}),
    ("admitted_without_a_lease", "request", {"id": 11, "command": "callback_result", "args": {
        "callback_id": "cb-2", "result": {"admitted": True}}}),
    ("lm_call_without_admission", "event", {"id": 12, "event": "lm_call", "data": {
        "model": "openai/unlimited", "prompt_tokens": 90, "completion_tokens": 12, "cost_usd": None,
        "duration_us": 120000, "cached": False, "program_id": None, "estimated_tokens": 0, "error": None}}),
    # Under a token limit, leased calls that used less than their estimates sent no lm_call: what
    # they did not use goes back with the model's next admission.
    ("admit_event_returning_tokens", "event", {"id": 13, "event": "callback", "data": {
        "callback_id": "cb-3", "name": "portbridge.admit",
        "args": {"model": "openai/gpt-4o-mini", "limits": {"tokens_per_minute": 200000}, "estimated_tokens": 640,
                 "returned_tokens": 1107},
        "timeout_ms": 29950}}),
]

LEASE_EXCHANGES = [  # (name, format, request, expect), each to a fresh core worker
    ("describe_says_1_3", "json", {"id": 1, "command": "describe"},
     {"id": 1, "success": True, "result": {"protocol": 1, "protocol_minor": 3,
                                           "features": ["callbacks", "lm_calls", "lm_leases"]}}),
]


def exchange_case(n, f, req, exp) -> dict:
    return {"name": n, "format": f, "request": req, "payload_hex": (jbytes(req) if f == "json" else pack(req)).hex(),
            "expect": exp}


def write(name: str, description: str, cases: list[dict], **extra) -> None:
    doc = {"description": description, "protocol": 1, **extra, "cases": cases}
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    write("codec.json",
          "Frame payloads and their decoded values. Decoding payload_hex must give value; encoding value must "
          "decode back to value. frame_hex is payload_hex behind its 4-byte big-endian length.",
          codec_cases())
    write("bad_frames.json",
          "Byte streams sent to a fresh worker after its ready event. The worker must answer with replies in "
          "this order (each listed key must match the reply; category and code are error.category and "
          "error.code), then still answer ping, unless exit_code is given: then it must exit with that code "
          "(after end of input when end_input is true).",
          bad_frame_cases())
    write("exchanges.json",
          "One request each, sent to a fresh worker in the given format; the reply must contain every key of "
          "expect with an equal value (maps are compared key by key, recursively).",
          exchange_cases())
    write("callbacks.json",
          "Protocol 1.1 (callbacks). frames: one callback conversation in the order its frames go, in both "
          "formats; each payload_hex decodes to value, which its schema (schemas/<schema>.schema.json) accepts, "
          "and callback_result args also schemas/callback_result.schema.json. cases: requests sent to a fresh "
          "worker, as in exchanges.json.",
          [{"name": n, "format": f, "request": req,
            "payload_hex": (jbytes(req) if f == "json" else pack(req)).hex(), "expect": exp}
           for n, f, req, exp in CALLBACK_EXCHANGES],
          protocol_minor=1, frames=frames_of(CALLBACK_CONVERSATION))
    write("lm_calls.json",
          "Protocol 1.2 (LM calls). frames: a rate-limited call admitted, refused by the provider once and "
          "retried, in both formats; each payload_hex decodes to value, which its schema accepts (a "
          "portbridge.admit callback's args also schemas/admit.schema.json, an lm_call event's data also "
          "schemas/lm_call.schema.json). cases: requests sent to a fresh worker, as in exchanges.json. "
          "dspy_cases: requests sent in order to ONE worker that has the DSPy backend, each reply compared "
          "the same way.",
          [exchange_case(*case) for case in LM_CALL_EXCHANGES],
          protocol_minor=2,
          frames=frames_of(LM_CALL_CONVERSATION),
          dspy_cases=[exchange_case(*case) for case in LM_CALL_DSPY_EXCHANGES])
    write("leases.json",
          "Protocol 1.3 (admission leases). frames: an admission whose result carries a lease, lm_call events "
          "of calls started on it (with estimated_tokens), a leased attempt refused by the provider and the "
          "admission asked again, an admission that gives tokens back (returned_tokens), in both formats; each payload_hex decodes to value, which its schema accepts "
          "(a callback_result's result also schemas/admit.schema.json#/$defs/result, an lm_call event's data "
          "also schemas/lm_call.schema.json). cases: requests sent to a fresh worker, as in exchanges.json.",
          [exchange_case(*case) for case in LEASE_EXCHANGES],
          protocol_minor=3, frames=frames_of(LEASE_CONVERSATION))
    print("wrote codec.json, bad_frames.json, exchanges.json, callbacks.json, lm_calls.json, leases.json")
