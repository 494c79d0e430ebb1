"""Every core command, through a real worker process."""

from __future__ import annotations

import os

import jsonschema
import pytest

from bridge import codecs
from bridge.devtools.client import RemoteError
from tests.support.waiting import until

CORE = {"ping", "describe", "stats", "health", "cancel", "list_sessions", "end_session", "shutdown", "callback_result",
        "echo", "sleep"}
CONTROL = CORE - {"echo", "sleep"}


def test_ready_comes_first_and_lists_the_core(spawn):
    w = spawn()
    assert w.worker_events[0]["event"] == "ready"
    ready = w.ready
    assert ready["protocol"] == 1 and ready["pid"] == w.pid
    assert CORE <= set(ready["commands"])
    assert ready["limits"]["max_frame_bytes"] == 64 * 1024 * 1024


def test_ping(spawn):
    w = spawn()
    assert w.call("ping") == {"pong": True, "pid": w.pid}


def test_describe_lists_every_command_with_a_real_json_schema(spawn):
    w = spawn("--max-concurrency", "7")
    described = w.call("describe")
    commands = described["commands"]
    assert CORE <= set(commands)
    for name, info in commands.items():
        assert info["name"] == name and isinstance(info["description"], str) and info["description"]
        jsonschema.Draft202012Validator.check_schema(info["args"])
        assert info["args"]["type"] == "object"
        assert info["control"] == (name in CONTROL) or info["backend"] != "core"
    assert described["limits"]["max_concurrency"] == 7
    assert described["formats"] == ["json", "msgpack"]


def test_stats_counts_requests_errors_and_latency(spawn):
    w = spawn()
    for _ in range(3):
        w.call("echo", {"x": 1})
    w.request("sleep", {"ms": "bad"})
    w.request("no_such_command")
    stats = w.call("stats")
    assert stats["requests"]["echo"] == 3
    assert stats["errors"] == {"validation": 1, "not_found": 1}
    lat = stats["latency"]["echo"]
    assert lat["samples"] == 3 and 0 < lat["p50_us"] <= lat["p90_us"] <= lat["p99_us"] <= lat["max_us"]
    assert stats["in_flight"] == 0 and stats["queued"] == 0 and stats["sessions"] == 0
    assert stats["uptime_s"] > 0 and stats["rss_bytes"] > 10 * 1024 * 1024
    assert stats["frames"]["in"] == 6 and stats["frames"]["out"] >= 6


def test_stats_sees_work_in_flight(spawn):
    w = spawn("--max-concurrency", "1")
    running = w.submit("sleep", {"ms": 2000})
    queued = w.submit("sleep", {"ms": 2000})
    stats = until(lambda: w.call("stats"), lambda s: s["running"] == 1 and s["queued"] == 1)
    assert stats["in_flight"] == 2
    for p in (running, queued):
        w.call("cancel", {"request_id": p.id})
        assert p.wait()["error"]["category"] == "cancelled"


def test_health_is_starting_until_backends_registered_then_ok(spawn):
    w = spawn()
    first = w.call("health")
    assert first["status"] in ("starting", "ok") and first["accepting"] is True
    until(lambda: w.call("health"), lambda h: h["status"] == "ok")


def test_echo_returns_args_unchanged_in_both_formats(spawn):
    args = {"s": "é✓", "n": [1, 2.5, None, True], "m": {"a": {"b": []}}}
    assert spawn().call("echo", args) == args
    binary = {"blob": os.urandom(1000), "s": "x"}
    assert spawn(fmt="msgpack").call("echo", binary) == binary


def test_echo_carries_a_large_payload(spawn):
    blob = os.urandom(8 * 1024 * 1024)
    assert spawn(fmt="msgpack").call("echo", {"blob": blob})["blob"] == blob


def test_sleep_sleeps(spawn):
    reply = spawn().request("sleep", {"ms": 120})
    assert reply["result"] == {"slept_ms": 120} and reply["meta"]["elapsed_us"] >= 120_000


def test_cancel_running_and_queued_requests(spawn):
    w = spawn("--max-concurrency", "1")
    running = w.submit("sleep", {"ms": 10_000})
    queued = w.submit("sleep", {"ms": 10_000})
    until(lambda: w.call("stats"), lambda s: s["running"] == 1)
    assert w.call("cancel", {"request_id": queued.id}) == {"request_id": queued.id, "cancelled": True, "state": "queued"}
    assert w.call("cancel", {"request_id": running.id})["state"] == "running"
    for p, state in ((running, "running"), (queued, "queued")):
        error = p.wait(5)["error"]
        assert (error["category"], error["code"], error["details"]["state"]) == ("cancelled", "cancelled", state)
    assert w.call("cancel", {"request_id": running.id}) == {
        "request_id": running.id, "cancelled": False, "state": "unknown"}


def test_sessions_are_listed_and_ended(spawn):
    w = spawn()
    w.call("echo", {}, session_id="a")
    w.call("echo", {}, session_id="b")
    listed = w.call("list_sessions")
    assert listed["count"] == 2 and {s["session_id"] for s in listed["sessions"]} == {"a", "b"}
    busy = w.submit("sleep", {"ms": 10_000}, session_id="a")
    waiting = w.submit("sleep", {"ms": 10}, session_id="a")
    until(lambda: w.call("stats"), lambda s: s["running"] == 1)
    ended = w.call("end_session", {"session_id": "a"})
    assert ended == {"session_id": "a", "ended": True, "cancelled_requests": 2}
    for p in (busy, waiting):
        assert p.wait(5)["error"]["code"] == "session_ended"
    assert [s["session_id"] for s in w.call("list_sessions")["sessions"]] == ["b"]
    # the envelope's session_id names the session when args do not
    assert w.call("end_session", session_id="b")["session_id"] == "b"
    with pytest.raises(RemoteError) as info:
        w.call("end_session", {"session_id": "b"})
    assert info.value.category == "not_found"


def test_control_commands_do_not_create_sessions(spawn):
    w = spawn()
    for command in ("ping", "stats", "health", "describe", "list_sessions"):
        w.call(command, session_id="ghost")
    assert w.call("list_sessions")["count"] == 0


def test_idle_sessions_expire(spawn):
    w = spawn("--session-ttl", "0.2")
    w.call("echo", {}, session_id="short-lived")
    assert w.call("list_sessions")["count"] == 1
    until(lambda: w.call("list_sessions"), lambda s: s["count"] == 0, timeout=5)


def test_session_count_is_bounded(spawn):
    w = spawn("--max-sessions", "2")
    w.call("echo", {}, session_id="one")
    w.call("echo", {}, session_id="two")
    with pytest.raises(RemoteError) as info:
        w.call("echo", {}, session_id="three")
    assert (info.value.category, info.value.code) == ("overloaded", "too_many_sessions")
    w.call("end_session", {"session_id": "one"})
    assert w.call("echo", {"ok": 1}, session_id="three") == {"ok": 1}


def test_shutdown_command_answers_then_exits_zero(spawn):
    w = spawn()
    assert w.call("shutdown") == {"shutting_down": True, "grace_s": 1.0}
    assert w.process.wait(5) == 0


def test_msgpack_request_gets_msgpack_reply_in_auto_mode(raw):
    w = raw()
    w.send_doc({"id": 1, "command": "echo", "args": {"b": b"\x00"}}, fmt="msgpack")
    payload = w.read_frame()
    assert codecs.detect(payload) is codecs.MSGPACK
    w.send_doc({"id": 2, "command": "echo", "args": {}}, fmt="json")
    assert codecs.detect(w.read_frame()) is codecs.JSON




def test_describe_sent_at_once_lists_the_backends_too(raw):
    """The first frame after ready: describe waits for backend registration instead of listing the core alone."""
    w = raw("--backend-module", "tests.support.misbehaving_backend:backend")
    described = w.request({"id": 1, "command": "describe"})["result"]
    assert "hang" in described["commands"] and "misbehaving" in described["backends"]
