"""Faults, each with its defined outcome, in real worker processes.

test_worker_lifecycle.py covers the basic stops (EOF, SIGTERM, SIGINT, shutdown
with a stuck handler), the common exceptions, a backend module that is
missing, and stdout closed while idle. This file adds the rest of issue 6:
work in flight at every kind of stop (no lost reply, none twice, no frame cut),
a reader that stops reading, repeated signals, exceptions that break their own
str(), backends that raise while loading, processes handlers leave behind, and
one giant request.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections import Counter

import orjson
import pytest

from bridge.framing import encode_frame
from bridge.processes import alive as pid_alive
from tests.support.waiting import until
from tests.support.workers import worker_env

MISBEHAVING = ("--backends", "", "--backend-module", "tests.support.misbehaving_backend:backend")
SHUTTING_DOWN = ("shutdown", "shutting_down")


def _outcome(reply: dict):
    return "ok" if reply["success"] else (reply["error"]["category"], reply["error"]["code"])


def _send_quietly(w, data: bytes) -> None:
    try:
        w.send(data)
    except OSError:
        pass  # the worker exited before taking it all


def test_end_of_input_with_much_work_in_flight_answers_every_request_once(raw):
    """Everything already sent is answered exactly once: finished work as success, work that
    cannot finish within the grace period as shutting_down; then exit 0."""
    w = raw(*MISBEHAVING, "--shutdown-grace", "2")
    frames = [{"id": f"e{i}", "command": "echo", "args": {"i": i}} for i in range(300)]
    frames += [{"id": f"p{i}", "command": "ping"} for i in range(300)]
    frames += [{"id": f"s{i}", "command": "sleep", "args": {"ms": 50}, "session_id": f"s{i % 5}"} for i in range(20)]
    frames += [{"id": f"long{i}", "command": "sleep", "args": {"ms": 600_000}} for i in range(3)]
    frames += [{"id": "hung", "command": "hang"}]
    w.send(b"".join(encode_frame(orjson.dumps(f)) for f in frames))
    w.close_stdin()
    replies = w.read_to_end()
    assert w.wait(10) == 0
    counts = Counter(r["id"] for r in replies)
    assert set(counts) == {f["id"] for f in frames} and set(counts.values()) == {1}
    outcomes = {r["id"]: _outcome(r) for r in replies}
    assert {k for k, v in outcomes.items() if v != "ok"} == {"long0", "long1", "long2", "hung"}
    assert {outcomes[k] for k in ("long0", "long1", "long2", "hung")} == {SHUTTING_DOWN}
    assert all(r["result"] == {"i": int(r["id"][1:])} for r in replies if r["id"].startswith("e"))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_replies_stream_out_cuts_no_frame_and_answers_none_twice(raw, sig):
    w = raw("--backends", "", "--shutdown-grace", "1")
    blob = "z" * 2000
    data = b"".join(encode_frame(orjson.dumps({"id": i, "command": "echo", "args": {"blob": blob}}))
                    for i in range(3000))
    # 6 MB each way: more than the pipes hold, so the requests go from another thread while we read
    sender = threading.Thread(target=_send_quietly, args=(w, data), daemon=True)
    sender.start()
    first = w.read_reply()
    os.kill(w.pid, getattr(signal, sig))
    replies = [first, *w.read_to_end()]  # fails the test if stdout ends inside a frame
    assert w.wait(10) == 0
    sender.join(10)
    counts = Counter(r["id"] for r in replies)
    assert max(counts.values()) == 1
    assert {_outcome(r) for r in replies} <= {"ok", SHUTTING_DOWN}
    assert all(r["result"]["blob"] == blob for r in replies if r["success"])


def test_repeated_signals_take_the_one_shutdown_path_once(raw):
    w = raw(*MISBEHAVING, "--shutdown-grace", "0.5")
    w.send_doc({"id": "stuck", "command": "hang"})
    until(lambda: w.request({"id": "s", "command": "stats"})["result"], lambda s: s["running"] == 1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        os.kill(w.pid, sig)
    replies = w.read_to_end()
    assert [(r["id"], _outcome(r)) for r in replies] == [("stuck", SHUTTING_DOWN)]
    assert w.wait(10) == 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_taken_by_another_thread_than_main_still_stops_the_worker(raw, sig):
    """The main thread sits in read(); a signal the kernel hands to another thread never
    interrupts it (found when 8 signals at once left 2 workers in 60 running)."""
    w = raw(*MISBEHAVING, "--shutdown-grace", "0.3")
    w.send_doc({"id": "stuck", "command": "hang"})
    w.send_doc({"id": "sig", "command": "signal_this_thread", "args": {"signal": sig}})
    replies = {r["id"]: _outcome(r) for r in w.read_to_end(10)}
    assert replies == {"stuck": SHUTTING_DOWN, "sig": "ok"}
    assert w.wait(10) == 0


def test_a_reader_that_stops_reading_cannot_keep_the_worker_alive(raw):
    """Replies fill the pipe and the writing thread blocks for good; SIGTERM still ends the worker
    (the final seal waits for a frame in progress for a bounded time, then exits)."""
    w = raw("--backends", "", "--shutdown-grace", "0.3")
    requests = b"".join(encode_frame(orjson.dumps({"id": i, "command": "echo", "args": {"blob": "y" * (4 << 20)}}))
                        for i in range(4))
    sender = threading.Thread(target=_send_quietly, args=(w, requests), daemon=True)
    sender.start()
    sender.join(10)  # the worker kept reading while its replies had nowhere to go
    assert not sender.is_alive()
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait(15) == 0


def test_stdout_closed_with_work_in_flight_still_stops_the_worker(raw):
    w = raw(*MISBEHAVING, "--shutdown-grace", "0.3")
    w.send_doc({"id": 1, "command": "hang"})
    w.send_doc({"id": 2, "command": "sleep", "args": {"ms": 600_000}})
    w.process.stdout.close()
    w.send_doc({"id": 3, "command": "ping"})  # its reply meets the closed pipe
    assert w.wait(10) == 0
    assert not pid_alive(w.pid)


@pytest.mark.parametrize("kind", ["BrokenStr", "NonStrStr", "StopIteration", "ExceptionGroup",
                                  "BaseExceptionGroup", "HugeMessage"])
def test_exceptions_that_misbehave_themselves_get_one_reply_and_keep_the_pool(spawn, kind):
    """With one thread, a scheduler thread killed by the exception would leave nothing to run the echo."""
    w = spawn(*MISBEHAVING, "--max-concurrency", "1")
    error = w.request("raise", {"kind": kind}, timeout_ms=5000)["error"]
    assert (error["category"], error["code"]) == ("internal", "unhandled_exception")
    assert len(error["message"]) <= 2000
    if kind.endswith("ExceptionGroup"):  # every failure's own message, never "(2 sub-exceptions)"
        inside = ["ValueError: one", "KeyError: 'two'"] if kind == "ExceptionGroup" else ["KeyboardInterrupt", "x"]
        assert all(text in error["message"] for text in inside) and "sub-exception" not in error["message"]
        assert [e["message"] for e in error["details"]["errors"]] == \
            (inside if kind == "ExceptionGroup" else ["KeyboardInterrupt", "ValueError: x"])
    else:
        assert error["details"] == {"exception": "ValueError" if kind == "HugeMessage" else kind}
    assert w.call("echo", {"after": kind}, timeout_ms=5000) == {"after": kind}
    assert w.call("stats")["threads"] == 1


@pytest.mark.parametrize("how", ["ImportError", "SystemExit", "KeyboardInterrupt", "BaseException", "register"])
def test_a_backend_that_raises_while_loading_is_reported_and_the_others_serve(spawn, how):
    env = worker_env(PORTBRIDGE_TEST_IMPORT_RAISES="" if how == "register" else how)
    w = spawn("--backends", "", "--backend-module", "tests.support.broken_backends:register_raises",
              "--backend-module", "tests.support.misbehaving_backend:backend", env=env)
    health = until(lambda: w.call("health"), lambda h: h["backends"])
    assert health["status"] == "degraded"
    failed = {name: s for name, s in health["backends"].items() if s["state"] == "failed"}
    (state,) = failed.values()
    expected = "ValueError" if how == "register" else how
    assert state["error"].startswith(expected)
    assert health["backends"]["misbehaving"]["state"] == "ready", "a backend after the broken one still loads"
    assert w.call("log", {"message": "loaded"}) == {"logged": True}
    assert w.request("half_registered")["error"]["code"] == "unknown_command"
    assert w.close() == 0


@pytest.mark.parametrize("stop", ["eof", "SIGTERM"])
def test_processes_a_handler_started_do_not_outlive_the_worker(raw, stop):
    w = raw(*MISBEHAVING, "--shutdown-grace", "0.3")
    w.send_doc({"id": 1, "command": "spawn_child", "args": {"grandchild": True, "hang": True}})
    event = w.read_doc()
    pids = event["data"]["pids"]
    try:
        assert event["event"] == "progress" and all(pid_alive(p) for p in pids)
        if stop == "eof":
            w.close_stdin()
        else:
            os.kill(w.pid, signal.SIGTERM)
        assert _outcome(w.read_reply()) == SHUTTING_DOWN
        assert w.wait(10) == 0
        assert not any(pid_alive(p) for p in pids), "a child or grandchild outlived the worker"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- one giant request -----------------------------------------------------------------

MiB = 1024 * 1024
GIANT = 64 * MiB - 64  # just under the default --max-frame-bytes


def _giant(fmt: str, shape: str) -> bytes:
    """A ~64 MiB request of tiny items: decoded whole, each a dict (~5 GB in msgpack, ~2 GB in JSON)."""
    if fmt == "json":
        head, tail = b'{"id":"giant","command":"echo","args":{"x":[', b"]}}"
        unit = b"{}," if shape == "flat" else b"[{},{},{}],"
        items = unit * ((GIANT - len(head) - len(tail)) // len(unit))
        return head + items[:-1] + tail
    head = b"\x83\xa2id\xa5giant\xa7command\xa4echo\xa4args\x81\xa1x"
    if shape == "flat":  # one array of empty maps
        n = GIANT - len(head) - 5
        return head + b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    inner = b"\xdc" + struct.pack(">H", 60_000) + b"\x80" * 60_000  # many arrays, each under any length limit
    n = (GIANT - len(head) - 5) // len(inner)
    return head + b"\xdd" + struct.pack(">I", n) + inner * n


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


@pytest.mark.parametrize("fmt,shape", [("json", "flat"), ("json", "nested"), ("msgpack", "flat"),
                                       ("msgpack", "nested")])
def test_one_giant_request_of_tiny_items_is_refused_before_it_costs_memory(raw, fmt, shape):
    """Without the value limit such a frame took 2-5 GB while decoded; now it is refused with a
    categorised error, the worker's peak memory stays within a few times the frame, and it serves on."""
    w = raw("--backends", "")
    payload = _giant(fmt, shape)
    assert len(payload) <= 64 * MiB
    w.send(encode_frame(payload))
    reply = w.read_reply(timeout=60)
    assert (reply["id"], _outcome(reply)) == ("giant", ("protocol", "too_many_values"))
    assert reply["error"]["details"] == {"max_frame_values": 1024 * 1024, "format": fmt}
    assert _peak_rss(w.pid) < 600 * MiB
    assert w.request({"id": "after", "command": "ping"})["success"]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_the_value_limit_is_exact(raw, fmt):
    """--max-frame-values counts every element, entry and container: at the limit a frame is served."""
    w = raw("--backends", "", "--max-frame-values", "5000")
    # envelope map (1) + its 3 entries + args map (1) + its entry (1) + the list (1) + its elements
    at_limit = 5000 - 7
    for n, ok in ((at_limit, True), (at_limit + 1, False)):
        reply = w.request({"id": n, "command": "echo", "args": {"x": [0] * n}}, fmt=fmt)
        assert reply["success"] is ok and reply["id"] == n, reply if not ok else n
        if not ok:
            assert reply["error"]["code"] == "too_many_values"
