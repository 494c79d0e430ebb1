"""Start, failures and every way a worker stops: one shutdown path, exit codes, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bridge.devtools.client import RemoteError
from bridge.processes import alive as pid_alive, kill_process
from bridge.worker import PARENT_POLL_S, SHUTDOWN_MARGIN_S
from tests.support.waiting import until
from tests.support.workers import worker_env

MISBEHAVING = ("--backend-module", "tests.support.misbehaving_backend:backend")


def test_end_of_input_when_idle_exits_zero(raw):
    w = raw()
    w.close_stdin()
    assert w.read_frame() is None
    assert w.wait(5) == 0


def test_end_of_input_lets_in_flight_work_finish(raw):
    w = raw()
    w.send_doc({"id": 1, "command": "sleep", "args": {"ms": 300}})
    w.close_stdin()
    reply = w.read_reply()
    assert reply["id"] == 1 and reply["success"]
    assert w.read_frame() is None and w.wait(5) == 0


@pytest.mark.parametrize("stop", ["eof", "SIGTERM", "SIGINT", "shutdown"])
def test_every_stop_fails_stuck_work_with_shutdown_and_exits_zero(raw, stop):
    w = raw(*MISBEHAVING, "--shutdown-grace", "0.3")
    w.send_doc({"id": "stuck", "command": "hang"})
    until(lambda: w.request({"id": "s", "command": "stats"})["result"], lambda s: s["running"] == 1)
    if stop == "eof":
        w.close_stdin()
    elif stop == "shutdown":
        w.send_doc({"id": "bye", "command": "shutdown"})
        assert w.read_reply()["result"]["shutting_down"] is True
    else:
        os.kill(w.pid, getattr(signal, stop))
    reply = w.read_reply()
    assert reply["id"] == "stuck"
    assert (reply["error"]["category"], reply["error"]["code"]) == ("shutdown", "shutting_down")
    assert w.read_frame() is None
    assert w.wait(5) == 0
    assert not pid_alive(w.pid)


def test_during_the_grace_period_new_work_is_refused_but_control_answers(raw):
    w = raw(*MISBEHAVING, "--shutdown-grace", "2")
    w.send_doc({"id": 1, "command": "hang"})
    assert w.request({"id": 2, "command": "shutdown"})["success"]
    refused = w.request({"id": 3, "command": "echo", "args": {}})
    assert (refused["error"]["category"], refused["error"]["code"]) == ("shutdown", "shutting_down")
    assert refused["error"]["retryable"] is True
    assert w.request({"id": 4, "command": "health"})["result"]["status"] == "shutting_down"
    os.kill(w.pid, signal.SIGKILL)


@pytest.mark.parametrize("flags", [(), ("--log-frames",)], ids=["plain", "log-frames"])
def test_reader_closing_stdout_stops_the_worker(raw, flags):
    # With --log-frames the warning about the closed pipe is itself a frame to write:
    # it must be dropped, not wait for the write lock its own failed write holds.
    w = raw(*flags)
    w.process.stdout.close()
    w.send_doc({"id": 1, "command": "ping"})  # its reply meets a closed pipe
    assert w.wait(5) == 0


def test_unframed_input_exits_with_code_3(raw):
    w = raw()
    w.send(b"GET / HTTP/1.1\r\n\r\n")
    assert w.read_reply()["error"]["code"] == "stream_desync"
    assert w.wait(5) == 3


@pytest.mark.parametrize("option, says", [
    (("--backends", "no_such_backend"), "unknown backend(s) no_such_backend; installed: "),
    (("--backend-module", "tests.support.no_such_module:backend"), "no module named 'tests.support.no_such_module'"),
    (("--backend-module", "no_such_package.mod:x"), "no module named 'no_such_package'"),
    (("--backend-module", "tests.support.misbehaving_backend:nothing"), "has no attribute 'nothing'"),
    (("--backend-module", "tests.support.misbehaving_backend"), "must look like 'package.module:attribute'"),
])
@pytest.mark.parametrize("input_ends_at_once", [False, True])
def test_a_bad_backend_option_exits_2_with_one_line(raw, option, says, input_ends_at_once):
    w = raw(*option)
    if input_ends_at_once:  # input ending first must not turn the usage error into a clean exit
        w.close_stdin()
    assert w.read_frame() is None
    assert w.wait(5) == 2
    lines = [line for line in w.stderr_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("portbridge worker: ") and says in lines[0], lines


def test_print_to_stdout_never_breaks_framing(spawn):
    w = spawn(*MISBEHAVING)
    assert w.call("print_stdout") == {"printed": True, "child_exit": 0}
    assert w.call("ping")["pong"] is True
    assert not w.stray
    w.close()
    with open(w.stderr_path, encoding="utf-8") as f:
        stderr = f.read()
    for text in ("print() to stdout", "sys.stdout.write", "sys.__stdout__.write", "os.write(1)", "child stdout"):
        assert text in stderr
    assert "''" in stderr, "a child process must not read the worker's stdin"


@pytest.mark.parametrize("kind", ["ValueError", "KeyError", "RecursionError", "MemoryError", "KeyboardInterrupt",
                                  "SystemExit", "GeneratorExit", "BaseException"])
def test_any_exception_becomes_an_internal_error_and_the_worker_keeps_serving(spawn, kind):
    w = spawn(*MISBEHAVING)
    with pytest.raises(RemoteError) as info:
        w.call("raise", {"kind": kind})
    assert (info.value.category, info.value.code) == ("internal", "unhandled_exception")
    assert info.value.error["details"] == {"exception": kind}
    assert w.call("ping")["pong"] is True


def test_a_categorised_exception_keeps_its_category(spawn):
    with pytest.raises(RemoteError) as info:
        spawn(*MISBEHAVING).call("raise", {"kind": "BridgeError"})
    assert (info.value.category, info.value.code) == ("execution", "user_program_failed")


def test_tracebacks_reach_details_only_with_debug(spawn):
    plain = spawn(*MISBEHAVING).request("raise", {"kind": "ValueError"})["error"]
    debug = spawn(*MISBEHAVING, "--debug").request("raise", {"kind": "ValueError"})["error"]
    assert "traceback" not in plain["details"]
    assert "Traceback (most recent call last)" in debug["details"]["traceback"]


@pytest.mark.parametrize("kind,fmt,ok", [
    ("bytes", "json", False), ("bytes", "msgpack", True), ("big_int", "json", False),
    ("big_int", "msgpack", False), ("int_key", "json", False), ("int_key", "msgpack", True), ("set", "json", False),
])
def test_results_a_format_cannot_carry_are_serialization_errors(spawn, kind, fmt, ok):
    w = spawn(*MISBEHAVING, fmt=fmt)
    reply = w.request("result", {"kind": kind})
    assert reply["success"] is ok
    if not ok:
        assert (reply["error"]["category"], reply["error"]["code"]) == ("serialization", "unencodable_result")
        assert reply["error"]["details"] == {"format": fmt}
    assert w.call("ping")["pong"]


def test_json_logs_carry_request_and_trace_ids(spawn):
    w = spawn(*MISBEHAVING, "--log-format", "json", "--log-level", "info")
    w.call("log", {"level": "warning", "message": "hello from a handler"}, session_id="s-1",
           meta={"trace_id": "trace-9"})
    w.close()
    with open(w.stderr_path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.startswith("{")]
    (record,) = [r for r in lines if r["message"] == "hello from a handler"]
    assert record["level"] == "warning" and record["logger"] == "tests.misbehaving"
    assert (record["request_id"], record["trace_id"], record["session_id"]) == (1, "trace-9", "s-1")


def test_log_frames_forward_records_as_log_events(spawn):
    w = spawn(*MISBEHAVING, "--log-frames", "--log-level", "info")
    w.call("log", {"level": "info", "message": "forward me"}, meta={"trace_id": "t"})
    logs = until(lambda: [e["data"] for e in w.worker_events if e["event"] == "log"],
                 lambda events: any(d["message"] == "forward me" for d in events))
    (record,) = [d for d in logs if d["message"] == "forward me"]
    assert record["level"] == "info" and record["trace_id"] == "t"


def test_a_registered_secret_is_masked_in_replies_logs_and_log_events(spawn):
    secret = "sk-canary-0123456789abcdef"
    w = spawn(*MISBEHAVING, "--log-frames", "--debug")
    reply = w.request("leak", {"secret": secret})
    assert reply["error"]["category"] == "internal"
    assert secret not in json.dumps(reply) and "***" in reply["error"]["message"]
    until(lambda: w.worker_events, lambda events: any(e["event"] == "log" for e in events))
    assert secret not in json.dumps(w.worker_events)
    w.close()
    with open(w.stderr_path, encoding="utf-8") as f:
        assert secret not in f.read()


HANGING_SHUTDOWN = ("--backends", "", "--backend-module", "tests.support.misbehaving_backend:backend",
                    "--shutdown-grace", "0.2")


def _gone_within(pid: int, seconds: float) -> float:
    """How long ``pid`` took to exit; fails the test after ``seconds``."""
    started = time.monotonic()
    while pid_alive(pid):
        assert time.monotonic() - started < seconds, f"worker {pid} still alive after {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_backend_whose_shutdown_hangs_cannot_keep_the_worker_alive(raw):
    w = raw(*HANGING_SHUTDOWN, env=worker_env(PORTBRIDGE_TEST_SHUTDOWN_HANGS="1"))
    started = time.monotonic()
    w.close_stdin()
    assert w.wait(10) == 0
    # the grace, then BACKEND_SHUTDOWN_S for the hooks; well within the watchdog's grace + SHUTDOWN_MARGIN_S
    assert time.monotonic() - started < 0.2 + SHUTDOWN_MARGIN_S + 1.0


@pytest.mark.parametrize("share_stdin", [False, True], ids=["parent-holds-the-pipes", "a-sibling-holds-stdin"])
def test_a_worker_whose_parent_is_killed_is_gone_within_a_bound(share_stdin):
    """A real parent holds the worker's pipes; it is SIGKILLed. Whether input ends (the parent held the
    only write end) or not (a sibling holds it too), the worker must go, though its backend's shutdown hangs."""
    argv = [sys.executable, "-m", "tests.support.parent", *(["--share-stdin"] if share_stdin else []),
            *HANGING_SHUTDOWN]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, env=worker_env(PORTBRIDGE_TEST_SHUTDOWN_HANGS="1"))
    try:
        pids = json.loads(parent.stdout.readline())
        assert pid_alive(pids["worker"])
        parent.kill()
        parent.wait()
        took = _gone_within(pids["worker"], 10.0)
        assert took < 0.2 + SHUTDOWN_MARGIN_S + PARENT_POLL_S + 1.0, took
    finally:
        kill_process(parent)
        if pids.get("sibling"):
            os.kill(pids["sibling"], signal.SIGKILL)
