"""Concurrency inside one worker: control at once, bounded pool, session order, queue bound,
deadlines and cancel that answer even when the handler cannot be interrupted."""

from __future__ import annotations

from tests.support.waiting import until

MISBEHAVING = ("--backend-module", "tests.support.misbehaving_backend:backend")


def stats_of(w):
    return lambda: w.call("stats")


def test_control_commands_answer_while_every_thread_is_busy(spawn):
    w = spawn("--max-concurrency", "2", "--max-queue", "10")
    sleeps = [w.submit("sleep", {"ms": 3000}) for _ in range(6)]
    until(stats_of(w), lambda s: s["running"] == 2 and s["queued"] == 4)
    for command in ("ping", "health", "describe", "list_sessions"):
        assert w.request(command)["success"]
    assert not any(p.done() for p in sleeps), "control replies must not wait behind work"
    for p in sleeps:
        w.call("cancel", {"request_id": p.id})


def test_requests_run_concurrently_up_to_the_bound(spawn):
    w = spawn("--max-concurrency", "4")
    sleeps = [w.submit("sleep", {"ms": 5000}) for _ in range(6)]
    stats = until(stats_of(w), lambda s: s["running"] == 4 and s["queued"] == 2)
    assert stats["threads"] == 4
    for p in sleeps:
        w.call("cancel", {"request_id": p.id})


def test_different_sessions_run_concurrently(spawn):
    w = spawn()
    sleeps = [w.submit("sleep", {"ms": 5000}, session_id=f"s{i}") for i in range(3)]
    until(stats_of(w), lambda s: s["running"] == 3)
    for p in sleeps:
        w.call("cancel", {"request_id": p.id})


def test_one_session_runs_in_arrival_order(spawn):
    w = spawn("--max-concurrency", "8")
    # later requests are shorter: without ordering they would finish first
    pending = [w.submit("sleep", {"ms": 100 - 10 * i}, session_id="ordered") for i in range(8)]
    other = w.submit("sleep", {"ms": 1})  # no session: not held behind the lane
    replies = [p.wait(10) for p in pending]
    assert all(r["success"] for r in replies)
    order = sorted(pending, key=lambda p: p.received_ns)
    assert [p.id for p in order] == [p.id for p in pending]
    assert other.wait(10)["success"] and other.received_ns < pending[-1].received_ns


def test_a_full_queue_refuses_at_once(spawn):
    w = spawn("--max-concurrency", "1", "--max-queue", "2")
    running = w.submit("sleep", {"ms": 10_000})
    until(stats_of(w), lambda s: s["running"] == 1)
    queued = [w.submit("sleep", {"ms": 10_000}) for _ in range(2)]
    refused = w.request("sleep", {"ms": 1})
    error = refused["error"]
    assert (error["category"], error["code"], error["retryable"]) == ("overloaded", "queue_full", True)
    assert error["details"] == {"queued": 2, "max_queue": 2}
    assert not running.done() and not any(p.done() for p in queued)
    for p in [running, *queued]:
        w.call("cancel", {"request_id": p.id})
    assert w.call("echo", {"after": 1}) == {"after": 1}


def test_deadline_answers_a_queued_request(spawn):
    w = spawn("--max-concurrency", "1")
    running = w.submit("sleep", {"ms": 10_000})
    until(stats_of(w), lambda s: s["running"] == 1)
    late = w.request("sleep", {"ms": 1}, timeout_ms=100)
    assert late["error"]["category"] == "timeout" and not running.done()
    assert w.call("stats")["queued"] == 0
    w.call("cancel", {"request_id": running.id})


def test_deadline_answers_a_handler_that_never_returns(spawn):
    w = spawn(*MISBEHAVING)
    reply = w.request("hang", timeout_ms=150)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("timeout", "deadline_exceeded")
    assert reply["meta"]["elapsed_us"] >= 150_000
    stats = w.call("stats")
    assert stats["running"] == 1, "the stuck thread stays counted against --max-concurrency"
    assert stats["in_flight"] == 0
    assert w.call("echo", {"still": "serving"}) == {"still": "serving"}


def test_cancel_answers_a_handler_that_never_returns(spawn):
    w = spawn(*MISBEHAVING)
    hung = w.submit("hang")
    until(stats_of(w), lambda s: s["running"] == 1)
    assert w.call("cancel", {"request_id": hung.id})["cancelled"] is True
    assert hung.wait(5)["error"]["category"] == "cancelled"


def test_a_stuck_request_releases_its_session(spawn):
    w = spawn(*MISBEHAVING)
    stuck = w.submit("hang", session_id="s", timeout_ms=100)
    nxt = w.submit("echo", {"n": 2}, session_id="s")
    assert stuck.wait(5)["error"]["category"] == "timeout"
    assert nxt.wait(5)["result"] == {"n": 2}


def test_stuck_handlers_cannot_grow_the_pool(spawn):
    w = spawn(*MISBEHAVING, "--max-concurrency", "2", "--max-queue", "1")
    for _ in range(2):
        assert w.request("hang", timeout_ms=50)["error"]["category"] == "timeout"
    waiting = w.submit("sleep", {"ms": 1})
    stats = until(stats_of(w), lambda s: s["queued"] == 1)
    assert stats["running"] == 2 and stats["threads"] == 2
    assert w.request("sleep", {"ms": 1})["error"]["category"] == "overloaded"
    w.call("cancel", {"request_id": waiting.id})


def test_events_precede_their_final_reply(spawn):
    w = spawn(*MISBEHAVING)
    p = w.submit("emit", {"n": 200, "text": "abc"})
    reply = p.wait(10)
    assert reply["result"] == {"emitted": 200}
    assert [e["data"]["i"] for e in p.events] == list(range(200))
    assert all(e["event"] == "chunk" and e["id"] == p.id for e in p.events)


def test_many_pipelined_requests_each_get_one_reply(spawn):
    w = spawn("--max-queue", "5000")
    pending = [w.submit("echo", {"i": i}) for i in range(2000)]
    assert [p.wait(30)["result"]["i"] for p in pending] == list(range(2000))
    assert w.call("stats")["requests"]["echo"] == 2000
