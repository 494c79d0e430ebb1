"""Callbacks (protocol 1.1) at the real boundary: real workers, a test backend that calls back
(tests/support/callback_backend.py), the Python client answering, or raw frames where a client
must misbehave."""

from __future__ import annotations

import threading
import time

import pytest

from bridge import codecs
from tests.support.waiting import until

CB = ("--backends", "", "--backend-module", "tests.support.callback_backend:backend")


def callback_events(pending) -> list[dict]:
    return [e for e in pending.events if e["event"] == "callback"]


def next_event(w, name: str, replies: list | None = None) -> dict:
    """The next event ``name`` from a RawWorker (final replies on the way go to ``replies``)."""
    while True:
        doc = w.read_doc()
        assert doc is not None, "the worker ended its output"
        if doc.get("event") == name:
            return doc
        assert "event" in doc or replies is not None, f"unexpected reply {doc}"
        if "event" not in doc:
            replies.append(doc)


def replies_by_id(w, n: int) -> dict:
    out = {}
    while len(out) < n:
        doc = w.read_reply()
        assert doc is not None
        out[doc["id"]] = doc
    return out


# -- what works ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_callback_returns_the_clients_result_to_the_handler(spawn, fmt):
    w = spawn(*CB, fmt=fmt)
    assert w.ready["protocol"] == 1 and w.ready["protocol_minor"] >= 1 and "callbacks" in w.ready["features"]
    p = w.submit("call_back", {"name": "add", "args": {"a": 2, "b": 3}, "times": 3},
                 callbacks={"add": lambda args: args["a"] + args["b"]})
    result = p.wait(10)["result"]
    assert result["results"] == [5, 5, 5] and len(result["elapsed_ns"]) == 3
    events = callback_events(p)
    assert [e["data"]["name"] for e in events] == ["add"] * 3 and len({e["data"]["callback_id"] for e in events}) == 3
    assert all(e["data"]["args"] == {"a": 2, "b": 3} and e["data"]["timeout_ms"] is None for e in events)
    replies = until(lambda: list(p.callback_replies), lambda r: len(r) == 3)  # filled by the client's runner threads
    assert [r["result"]["accepted"] for r in replies] == [True] * 3


def test_the_event_carries_what_is_left_of_the_request_budget(spawn):
    w = spawn(*CB)
    p = w.submit("call_back", {"name": "now"}, timeout_ms=5000, callbacks={"now": lambda args: "ok"})
    assert p.wait(10)["success"]
    (event,) = callback_events(p)
    assert 0 < event["data"]["timeout_ms"] <= 5000


def test_many_callbacks_wait_at_once_across_requests(spawn):
    """Six requests whose callbacks can only return once all six are in flight together."""
    w = spawn(*CB)
    barrier = threading.Barrier(6, timeout=20)
    pending = [w.submit("call_back", {"name": "meet", "args": {"n": i}}, callbacks={"meet": lambda a: barrier.wait()})
               for i in range(6)]
    results = sorted(p.wait(30)["result"]["results"][0] for p in pending)
    assert results == [0, 1, 2, 3, 4, 5]  # each a distinct arrival index: all six were waiting at once


def test_a_slow_callback_holds_up_no_other_reply(spawn):
    w = spawn(*CB)
    release = threading.Event()
    slow = w.submit("call_back", {"name": "slow"}, callbacks={"slow": lambda a: release.wait(20)})
    until(lambda: w.call("stats")["callbacks"], lambda c: c["waiting"] == 1)
    assert w.call("echo", {"meanwhile": 1}) == {"meanwhile": 1}
    assert w.call("call_back", {"name": "quick"}, callbacks={"quick": lambda a: "fast"})["results"] == ["fast"]
    assert not slow.done()
    release.set()
    assert slow.wait(10)["result"]["results"] == [True]


def test_a_callback_may_make_requests_on_the_same_client(spawn):
    w = spawn(*CB)

    def outer(args):  # a callback that makes a request whose handler calls back again
        inner = w.call("call_back", {"name": "inner", "args": {"depth": 2}}, callbacks={"inner": lambda a: a})
        return {"echo": w.call("echo", {"x": 1}), "inner": inner["results"]}

    assert w.call("call_back", {"name": "outer"}, callbacks={"outer": outer}, timeout_ms=20_000)["results"] == [
        {"echo": {"x": 1}, "inner": [{"depth": 2}]}]


# -- failures the client reports ------------------------------------------------------------------------


def test_a_callback_that_raises_fails_the_request_with_execution(spawn):
    w = spawn(*CB)
    reply = w.request("call_back", {"name": "boom"}, callbacks={"boom": lambda a: 1 / 0})
    assert (reply["error"]["category"], reply["error"]["code"]) == ("execution", "callback_failed")
    assert "ZeroDivisionError" in reply["error"]["message"] and reply["error"]["details"] == {"callback": "boom"}
    caught = w.call("call_back", {"name": "boom", "catch": True}, callbacks={"boom": lambda a: 1 / 0})
    assert caught["caught"] == "execution"  # the handler decides
    assert w.call("ping")["pong"]


@pytest.mark.parametrize("fmt, value", [("json", object()), ("json", b"bytes"), ("msgpack", {1j})])
def test_a_result_the_format_cannot_carry_is_a_serialization_error(spawn, fmt, value):
    w = spawn(*CB, fmt=fmt)
    reply = w.request("call_back", {"name": "odd"}, callbacks={"odd": lambda a: value})
    assert (reply["error"]["category"], reply["error"]["code"]) == ("serialization", "callback_failed")


def test_a_name_the_client_did_not_register_is_not_found(spawn):
    w = spawn(*CB)
    reply = w.request("call_back", {"name": "ghost"}, callbacks={"other": lambda a: 1})
    assert (reply["error"]["category"], reply["error"]["code"]) == ("not_found", "callback_failed")


def test_the_category_the_client_gives_reaches_the_handler(raw):
    w = raw(*CB)
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "lm", "catch": True}})
    event = next_event(w, "callback")
    w.send_doc({"id": 2, "command": "callback_result", "args": {
        "callback_id": event["data"]["callback_id"], "error": {"message": "slow down", "category": "lm_rate_limit"}}})
    replies = replies_by_id(w, 2)
    assert replies[2]["result"] == {"callback_id": event["data"]["callback_id"], "accepted": True}
    assert replies[1]["result"]["caught"] == "lm_rate_limit" and "slow down" in replies[1]["result"]["message"]


# -- bad input ----------------------------------------------------------------------------------------


def test_a_name_the_request_did_not_declare_is_refused_by_the_backend(spawn):
    w = spawn(*CB)
    p = w.submit("call_back", {"name": "rm_rf", "declared": ["search"]}, callbacks={"rm_rf": lambda a: 1})
    reply = p.wait(10)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("validation", "undeclared_callback")
    assert not callback_events(p)


@pytest.mark.parametrize("bad", [[1, 2], "text", None])
def test_callback_args_that_are_not_a_map_are_refused_before_anything_is_sent(spawn, bad):
    w = spawn(*CB)
    p = w.submit("call_back", {"name": "f", "args_not_a_map": bad}, callbacks={"f": lambda a: a})
    reply = p.wait(10)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("validation", "invalid_callback")
    assert not callback_events(p)


def test_a_result_sent_twice_is_not_found_the_second_time(raw):
    w = raw(*CB)
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "x"}})
    cid = next_event(w, "callback")["data"]["callback_id"]
    w.send_doc({"id": 2, "command": "callback_result", "args": {"callback_id": cid, "result": "first"}})
    w.send_doc({"id": 3, "command": "callback_result", "args": {"callback_id": cid, "result": "second"}})
    replies = replies_by_id(w, 3)
    assert replies[1]["result"]["results"] == ["first"] and replies[2]["success"]
    assert (replies[3]["error"]["category"], replies[3]["error"]["code"]) == ("not_found", "unknown_callback")


def test_a_malformed_result_is_refused_and_the_callback_still_waits_for_a_good_one(raw):
    w = raw(*CB)
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "x"}})
    cid = next_event(w, "callback")["data"]["callback_id"]
    for i, args in enumerate([{"callback_id": cid}, {"callback_id": cid, "result": 1, "error": {"message": "m"}},
                              {"callback_id": cid, "error": {"message": 5}}, {"callback_id": [cid], "result": 1},
                              {"callback_id": cid, "error": {"message": "m", "category": "nope"}}], start=10):
        reply = w.request({"id": i, "command": "callback_result", "args": args})
        assert (reply["error"]["category"], reply["error"]["code"]) == ("validation", "invalid_args"), args
    w.send_doc({"id": 2, "command": "callback_result", "args": {"callback_id": cid, "result": "good"}})
    replies = replies_by_id(w, 2)
    assert replies[1]["result"]["results"] == ["good"]


def test_a_callback_never_answered_ends_at_the_request_deadline(raw):
    w = raw(*CB)
    started = time.monotonic()
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "silent"}, "timeout_ms": 300})
    event = next_event(w, "callback")
    assert 0 < event["data"]["timeout_ms"] <= 300
    reply = w.read_reply()
    took = time.monotonic() - started
    assert (reply["id"], reply["error"]["category"]) == (1, "timeout") and 0.29 < took < 3.0
    late = w.request({"id": 2, "command": "callback_result",
                      "args": {"callback_id": event["data"]["callback_id"], "result": "late"}})
    assert late["error"]["code"] == "unknown_callback"
    stats = until(lambda: w.request({"id": "s", "command": "stats"})["result"], lambda s: s["running"] == 0)
    assert stats["callbacks"]["waiting"] == 0  # the handler was woken, not left waiting


def test_a_callbacks_own_bound_is_the_handlers_to_catch(spawn):
    w = spawn(*CB)
    hold = threading.Event()
    caught = w.call("call_back", {"name": "slow", "catch": True, "timeout_s": 0.2},
                    callbacks={"slow": lambda a: hold.wait(10)})
    assert (caught["caught"], caught["code"]) == ("timeout", "callback_timeout")
    hold.set()


def test_cancel_wakes_a_waiting_callback(raw):
    w = raw(*CB)
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "x"}})
    cid = next_event(w, "callback")["data"]["callback_id"]
    w.send_doc({"id": 2, "command": "cancel", "args": {"request_id": 1}})
    replies = replies_by_id(w, 2)
    assert replies[1]["error"]["category"] == "cancelled" and replies[2]["result"]["state"] == "running"
    until(lambda: w.request({"id": "s", "command": "stats"})["result"], lambda s: s["running"] == 0)
    late = w.request({"id": 3, "command": "callback_result", "args": {"callback_id": cid, "result": 1}})
    assert late["error"]["code"] == "unknown_callback"


def test_shutdown_wakes_a_waiting_callback(raw):
    w = raw(*CB, "--shutdown-grace", "0.3")
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "x"}})
    next_event(w, "callback")
    w.send_doc({"id": 2, "command": "shutdown"})
    replies = {r["id"]: r for r in w.read_to_end(10)}
    assert replies[2]["success"] and (replies[1]["error"]["category"], replies[1]["error"]["code"]) == (
        "shutdown", "shutting_down")
    assert w.wait(10) == 0


def test_a_client_whose_input_ends_wakes_its_waiting_callbacks_at_once(raw):
    """The client can never answer once its input ended: the handler hears it at once, not after the grace."""
    w = raw(*CB, "--shutdown-grace", "30")
    w.send_doc({"id": 1, "command": "call_back", "args": {"name": "x"}})
    next_event(w, "callback")
    started = time.monotonic()
    w.close_stdin()
    (reply,) = w.read_to_end(10)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("shutdown", "client_gone")
    assert w.wait(10) == 0 and time.monotonic() - started < 5


def test_a_flood_of_callbacks_gets_overloaded_and_the_worker_keeps_serving(spawn):
    w = spawn(*CB, "--max-callbacks", "4")
    release = threading.Event()
    p = w.submit("call_back_parallel", {"name": "hold", "n": 12}, callbacks={"hold": lambda a: release.wait(20)})
    until(lambda: w.call("stats")["callbacks"], lambda c: c["waiting"] == 4 and c["refused"] == 8, timeout=20)
    assert w.call("ping")["pong"]
    release.set()
    assert p.wait(20)["result"]["outcomes"] == {"ok": 4, "overloaded/too_many_callbacks": 8}
    assert w.call("call_back", {"name": "after"}, callbacks={"after": lambda a: 1})["results"] == [1]


def test_a_control_command_cannot_call_back(spawn):
    w = spawn(*CB)
    reply = w.request("call_back_inline")
    assert (reply["error"]["category"], reply["error"]["code"]) == ("internal", "callback_in_control_command")
    assert w.call("ping")["pong"]


def test_callback_result_is_described(spawn):
    described = spawn("--backends", "").call("describe")
    command = described["commands"]["callback_result"]
    assert command["control"] and command["args"]["required"] == ["callback_id"]
    assert described["protocol_minor"] >= 1 and "callbacks" in described["features"]
    assert described["limits"]["max_callbacks"] == 1024


def test_the_client_sends_callback_results_in_the_requests_format(spawn):
    w = spawn(*CB, fmt="json")
    p = w.submit("call_back", {"name": "b"}, codec=codecs.MSGPACK, callbacks={"b": lambda a: b"\x00\xff"})
    assert p.wait(10)["result"]["results"] == [b"\x00\xff"]  # bytes: only msgpack carries them
