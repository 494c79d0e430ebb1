"""The debugging CLI as a user runs it: call, encode | worker | decode, repl."""

from __future__ import annotations

import json
import subprocess
import sys

from bridge import codecs
from bridge.framecat import from_readable
from bridge.framing import FrameDecoder, encode_frame
from tests.support.workers import worker_env

CLI = [sys.executable, "-m", "bridge"]


def run(*args, input: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout, env=worker_env())


def test_call_prints_the_reply_and_exits_zero():
    result = run("call", "ping")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["success"] is True and reply["result"]["pong"] is True


def test_call_in_msgpack_with_args():
    result = run("call", "echo", "--args", '{"x": 1}', "--format", "msgpack")
    assert result.returncode == 0 and json.loads(result.stdout)["result"] == {"x": 1}


def test_call_exits_one_on_an_error_reply():
    result = run("call", "sleep", "--args", '{"ms": 2000}', "--timeout-ms", "50")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["category"] == "timeout"


def test_call_prints_events_before_the_reply_and_passes_worker_options():
    result = run("call", "emit", "--args", '{"n": 2}', "--",
                 "--backend-module", "tests.support.misbehaving_backend:backend")
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("event chunk id=1 ") and lines[1].startswith("event chunk id=1 ")
    assert json.loads("\n".join(lines[2:]))["result"] == {"emitted": 2}


def test_call_refuses_args_that_are_not_a_json_object():
    result = run("call", "echo", "--args", "[1]")
    assert result.returncode != 0 and b"JSON object" in result.stderr


def test_encode_worker_decode_round_trip_in_both_formats():
    requests = [{"id": 1, "command": "echo", "args": {"blob": {"$bytes": "AAE="}}},
                {"id": 2, "command": "ping"}]
    lines = "\n".join(json.dumps(r) for r in requests).encode() + b"\n"
    frames = run("encode", "--format", "msgpack", input=lines).stdout
    decoder = FrameDecoder()
    decoder.feed(frames)
    assert [codecs.MSGPACK.decode(p) for p in decoder.frames()] == [from_readable(r) for r in requests]
    worker = subprocess.run([*CLI, "worker"], input=frames, capture_output=True, timeout=60, env=worker_env())
    assert worker.returncode == 0
    decoded = run("decode", input=worker.stdout)
    assert decoded.returncode == 0
    docs = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert docs[0]["event"] == "ready"
    replies = {d["id"]: d for d in docs[1:]}
    assert replies[1]["result"] == {"blob": {"$bytes": "AAE="}} and replies[2]["result"]["pong"] is True


def test_decode_reads_mixed_formats_and_reports_bad_frames():
    good_json = codecs.JSON.encode({"a": 1})
    good_msgpack = codecs.MSGPACK.encode({"b": b"\x00"})
    stream = b"".join(encode_frame(p) for p in (good_json, good_msgpack, b"[1]", b""))
    result = run("decode", "-v", input=stream + b"\x00\x00\x00\x09{}")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"format": "json", "length": len(good_json), "frame": {"a": 1}}
    assert lines[1]["format"] == "msgpack" and lines[1]["frame"] == {"b": {"$bytes": "AA=="}}
    assert "$error" in lines[2] and "$error" in lines[3] and "ended inside a frame" in lines[4]["$error"]
    assert result.returncode == 1


def test_repl_runs_one_request_per_line_with_sessions():
    script = b"""
# comments and blank lines are skipped
ping
echo {"x": 1}
:session s1
echo {"in": "session"}
list_sessions
{"id": "mine", "command": "echo", "args": {"full": "envelope"}}
"""
    result = run("repl", input=script)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert '"pong": true' in text and '"x": 1' in text and '"full": "envelope"' in text
    assert '"session_id": "s1"' in text and '"id": "mine"' in text


def test_repl_exits_one_when_a_request_failed():
    assert run("repl", input=b"no_such_command\n").returncode == 1
