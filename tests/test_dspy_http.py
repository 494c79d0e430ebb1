"""The real DSPy -> HTTP path, end to end, against an OpenAI-compatible server on 127.0.0.1.

The worker's DSPy talks to ``tests/support/openai_server.py`` through its own
client, exactly as it would to a provider: plain calls, SSE streaming,
concurrent sessions on different models, and each failure class landing in
its error category. Failure tests use ``num_retries: 0`` so that a refused
connection costs milliseconds, not DSPy's default seven seconds of retries.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.dspy_workers import dspy_worker, error_of, stderr_text
from tests.support.openai_server import OpenAIServer
from tests.support.waiting import until

API_KEY = "sk-portbridge-test-7f3a9c1e5b"


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(api_key=API_KEY, chunk_chars=5) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-http"), "--log-level", "debug") as w:
        yield w


def configure(worker, server, session: str, model: str, **extra) -> dict:
    args = {"model": f"openai/{model}", "api_base": server.base_url, "api_key": API_KEY, "num_retries": 0, **extra}
    return worker.call("configure_lm", args, session_id=session)


def program(worker, session: str, module: str = "Predict", program_id: str = "qa") -> None:
    worker.call("create_program", {"signature": "question -> answer", "module": module, "program_id": program_id},
                session_id=session)


def test_a_plain_call_goes_over_http_with_the_key_and_reports_usage(worker, server):
    s = "plain"
    reply = configure(worker, server, s, "echo-1")
    assert reply["model"] == "openai/echo-1" and reply["api_key_set"] is True and API_KEY not in str(reply)
    assert reply["api_base"] == server.base_url and reply["scope"] == "session"
    program(worker, s)
    before = len(server.seen)
    result = worker.call("execute_program", {"program_id": "qa", "inputs": {"question": "What is DSPy?"}},
                         session_id=s)
    assert result["outputs"] == {"answer": "echo-1 says answer for What is DSPy?"}
    seen = server.seen[before:]
    assert len(seen) == 1 and seen[0].model == "echo-1" and seen[0].authorization == f"Bearer {API_KEY}"
    usage = result["usage"]["openai/echo-1"]
    assert usage["lm_calls"] == 1 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_over_server_sent_events(worker, server):
    s = "sse"
    configure(worker, server, s, "streamer")
    program(worker, s, "ChainOfThought")
    events = []
    result = worker.call("execute_program", {"program_id": "qa", "inputs": {"question": "Why?"}, "stream": True},
                         session_id=s, on_event=events.append)
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert server.seen[-1].stream is True
    assert len(chunks) >= 6, chunks  # the server sends 5 characters per SSE event
    for field in ("reasoning", "answer"):
        assert "".join(c["text"] for c in chunks if c["field"] == field) == result["outputs"][field]
    assert result["outputs"]["answer"] == "streamer says answer for Why?"
    assert result["usage"]["openai/streamer"]["total_tokens"] > 0


def test_concurrent_sessions_with_different_models_never_mix(worker, server):
    sessions = [f"tenant-{i}" for i in range(6)]
    for i, s in enumerate(sessions):
        configure(worker, server, s, f"model-{i}")
        program(worker, s, "ChainOfThought" if i % 2 else "Predict")
    pending = []
    for round_ in range(4):
        for i, s in enumerate(sessions):
            args = {"program_id": "qa", "inputs": {"question": f"q{round_} from {s}"}, "stream": round_ == 3}
            pending.append((i, s, round_, worker.submit("execute_program", args, session_id=s)))
    for i, s, round_, p in pending:
        reply = p.wait(60)
        assert reply["success"], reply
        assert reply["result"]["outputs"]["answer"] == f"model-{i} says answer for q{round_} from {s}"
    for i, s in enumerate(sessions):
        usage = worker.call("lm_usage", session_id=s)["models"]
        assert set(usage) == {f"openai/model-{i}"} and usage[f"openai/model-{i}"]["lm_calls"] == 4


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("model, category, code", [
    ("fail-401", "lm_auth", "auth_failed"),
    ("fail-403", "lm_auth", "auth_failed"),
    ("fail-429", "lm_rate_limit", "rate_limited"),
    ("fail-500", "lm_unavailable", "server_error"),
    ("fail-503", "lm_unavailable", "server_error"),
    ("context-window", "lm_invalid_request", "context_window_exceeded"),
    ("garbage", "lm_unavailable", "provider_error"),
    ("unparseable", "output_parse", "output_parse"),
])
def test_each_provider_failure_lands_in_its_category(worker, server, model, category, code):
    s = f"fail-{model}"
    configure(worker, server, s, model)
    program(worker, s)
    started = time.perf_counter()
    err = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "x"}}, session_id=s)
    assert (err["category"], err["code"]) == (category, code), err
    assert time.perf_counter() - started < 5
    assert API_KEY not in str(err)


def test_a_refused_connection_is_lm_unavailable_at_once(worker, server):
    s = "refused"
    worker.call("configure_lm", {"model": "openai/echo", "api_base": f"http://127.0.0.1:{_closed_port()}/v1",
                                 "api_key": API_KEY, "num_retries": 0}, session_id=s)
    program(worker, s)
    started = time.perf_counter()
    err = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "x"}}, session_id=s)
    assert (err["category"], err["code"]) == ("lm_unavailable", "transport")
    assert time.perf_counter() - started < 3  # no retries: DSPy's default 3 would take ~7 s


def test_a_model_slower_than_the_deadline_times_out_at_the_deadline(worker, server):
    s = "slow"
    configure(worker, server, s, "slow-3000")
    program(worker, s)
    started = time.perf_counter()
    err = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "x"}},
                   session_id=s, timeout_ms=300)
    elapsed = time.perf_counter() - started
    assert err["category"] == "timeout" and 0.25 < elapsed < 2.5  # at the deadline, not when the model answers
    # The LM client's own timeout (timeout_s) is a transport failure of the provider.
    configure(worker, server, s, "slow-3000", timeout_s=0.2)
    err = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "x"}}, session_id=s)
    assert (err["category"], err["code"]) == ("lm_unavailable", "lm_read_timeout")
    # The session still works afterwards.
    configure(worker, server, s, "echo")
    assert worker.call("execute_program", {"program_id": "qa", "inputs": {"question": "x"}}, session_id=s)


def test_bootstrap_few_shot_over_http_keeps_the_runs_the_metric_accepts(worker, server):
    s = "bootstrap-http"
    configure(worker, server, s, "tutor")
    program(worker, s)
    trainset = [{"inputs": {"question": q}, "outputs": {"answer": f"tutor says answer for {q}"}}
                for q in ("a?", "b?", "c?")]
    trainset.append({"inputs": {"question": "d?"}, "outputs": {"answer": "something else"}})
    progress = []
    result = worker.call("optimize_program", {"program_id": "qa", "optimizer": "BootstrapFewShot",
                                              "trainset": trainset, "metric": "exact_match",
                                              "options": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4}},
                         session_id=s, on_event=progress.append)
    assert result["bootstrapped"] == 3 and result["demos"] == 4  # 3 accepted runs + 1 labelled example
    assert result["usage"]["openai/tutor"]["lm_calls"] == 4
    assert progress[-1]["data"]["done"] == 4
    demos = worker.call("export_program", {"program_id": "qa"}, session_id=s)["program"]["state"]
    assert sum(1 for d in demos["predictors"]["self"]["demos"] if d.get("augmented")) == 3


def test_a_cancelled_optimisation_stops_between_examples(worker, server):
    """Each LM call takes 50 ms, so 100 examples would take 5 s; the cancel stops it after one or two."""
    s = "cancel-optimize"
    configure(worker, server, s, "slow-50")
    program(worker, s)
    trainset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": "a"}} for i in range(100)]
    running = threading.Event()
    pending = worker.submit("optimize_program", {
        "program_id": "qa", "optimizer": "BootstrapFewShot", "trainset": trainset,
        "options": {"max_bootstrapped_demos": 100, "max_errors": 100}},
        session_id=s, on_event=lambda e: e["data"]["done"] > 0 and running.set())
    assert running.wait(30), "no progress event"
    assert worker.call("cancel", {"request_id": pending.id})["cancelled"]
    assert pending.wait(10)["error"]["category"] == "cancelled"
    # The handler notices before its next example, stops, and records what it used; the program is kept.
    until(lambda: worker.call("stats"), lambda stats: stats["running"] == 0, timeout=30)
    assert worker.call("get_program", {"program_id": "qa"}, session_id=s)["demos"] == 0
    assert worker.call("lm_usage", session_id=s)["models"]["openai/slow-50"]["lm_calls"] <= 3


def test_the_api_key_never_leaves_the_worker(worker, server):
    """Run last in this module: every frame and log line the worker wrote so far must be free of the key."""
    s = "secret"
    configure(worker, server, s, "fail-401")
    program(worker, s)
    error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": API_KEY}}, session_id=s)
    worker.call("export_program", {"program_id": "qa"}, session_id=s)
    worker.call("lm_usage", session_id=s)
    worker.call("stats")
    frames = "\n".join(str(f) for f in worker.frames)
    assert "Bearer" not in frames and API_KEY not in frames
    assert API_KEY not in stderr_text(worker)
    assert len(worker.frames) > 50


PYTHON_ADVICE = ("dspy.LM", "dspy.configure", "RouterConfig", "api_key=")


@pytest.mark.parametrize("args, code", [
    ({"api_key": "sk-wrong"}, "auth_failed"),  # the provider answers 401
    ({}, "no_credentials"),  # no key at all, none in the worker's environment
])
def test_credential_errors_say_the_remedy_in_the_protocols_terms(worker, server, args, code):
    s = f"remedy-{code}"
    worker.call("configure_lm", {"model": "openai/echo", "api_base": server.base_url, "num_retries": 0, **args},
                session_id=s)
    program(worker, s)
    err = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "x"}}, session_id=s)
    assert (err["category"], err["code"]) == ("lm_auth", code), err
    assert "configure_lm" in err["message"], err["message"]
    for advice in PYTHON_ADVICE:
        assert advice not in err["message"], err["message"]
