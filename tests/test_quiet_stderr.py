"""``--quiet-stderr``: a worker that writes nothing to stderr, its records going out as ``log`` frames.

For quiet test suites (the Elixir client's): every record, Python warnings,
uncaught exceptions and what Python code prints reach the client as ``log``
events with ``--log-frames``, and the worker's stderr stays empty, start-up
and shutdown included.
"""

from __future__ import annotations

import pytest

from tests.support.waiting import until
from tests.support.workers import read_stderr

MISBEHAVING = ("--backends", "", "--backend-module", "tests.support.misbehaving_backend:backend")
QUIET = ("--quiet-stderr", "--log-frames", "--log-level", "info")


def log_events(worker, wanted):
    """The worker's log events, once one matches each predicate of ``wanted``."""
    return until(lambda: [e["data"] for e in worker.worker_events if e["event"] == "log"],
                 lambda logs: all(any(want(d) for d in logs) for want in wanted))


def test_every_record_goes_out_as_a_log_frame_and_nothing_to_stderr(spawn):
    w = spawn(*MISBEHAVING, *QUIET)
    assert w.call("noise", meta={"trace_id": "t-noise"}) == {"noisy": True}
    assert w.request("raise", {"kind": "ValueError"})["error"]["category"] == "internal"
    logs = log_events(w, [
        lambda d: d["message"] == "print() from a handler",
        lambda d: d["message"] == "100% done",
        lambda d: "a library's warning" in d["message"],
        lambda d: d["message"] == "a library's record",
        lambda d: "noisy-thread" in d["message"] and "ZeroDivisionError" in d["message"],
        lambda d: "a finaliser failed" in d["message"],
        lambda d: "Traceback" in d["message"] and "a plain bug" in d["message"],
    ])
    by_message = {d["message"]: d for d in logs}
    printed = by_message["print() from a handler"]
    assert (printed["level"], printed["logger"], printed["trace_id"]) == ("info", "portbridge.stdout", "t-noise")
    assert (by_message["100% done"]["level"], by_message["100% done"]["logger"]) == ("warning", "portbridge.stderr")
    assert any(d["logger"] == "py.warnings" for d in logs)
    assert w.close() == 0
    assert read_stderr(w.stderr_path) == ""


def test_without_log_frames_the_records_go_nowhere(spawn):
    w = spawn(*MISBEHAVING, "--quiet-stderr")
    assert w.call("noise") == {"noisy": True}
    assert w.request("raise", {"kind": "ValueError"})["error"]["category"] == "internal"
    assert not [e for e in w.worker_events if e["event"] == "log"]
    assert w.close() == 0
    assert read_stderr(w.stderr_path) == ""


def test_without_quiet_the_same_noise_reaches_stderr_as_log_lines(spawn):
    w = spawn(*MISBEHAVING)
    assert w.call("noise") == {"noisy": True}
    assert w.close() == 0
    stderr = read_stderr(w.stderr_path)
    assert "print() from a handler" in stderr and "a library's warning" in stderr
    assert "portbridge.uncaught" in stderr and "noisy-thread" in stderr


@pytest.mark.slow
def test_what_dspy_prints_while_optimising_becomes_log_frames(spawn):
    w = spawn(*QUIET)
    w.call("configure_lm", {"model": "offline"})
    w.call("create_program", {"signature": "question -> answer", "program_id": "qa"})
    trainset = [{"inputs": {"question": f"What is {i} + {i}?"}, "outputs": {"answer": str(2 * i)}} for i in range(4)]
    w.call("optimize_program", {"program_id": "qa", "optimizer": "BootstrapFewShotWithRandomSearch",
                                "trainset": trainset, "options": {"num_candidate_programs": 1, "max_bootstrapped_demos": 1}})
    log_events(w, [lambda d: d["logger"] == "portbridge.stdout" and "Best score so far" in d["message"]])
    assert w.close() == 0
    assert read_stderr(w.stderr_path) == ""
