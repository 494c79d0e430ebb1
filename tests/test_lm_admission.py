"""Rate-limited LMs: ``portbridge.admit`` before every HTTP attempt, the bridge's retries, ``lm_call`` events.

A real worker, real frames, the loopback OpenAI server (with its enforced
rate limit where a test needs a provider's 429s). A test answers admission
itself where it must see or steer each one (a ``portbridge.admit`` callback
of the request), and leaves it to the Python client's pacer otherwise.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.dspy_workers import module_server, module_worker

KEY = "sk-admission"
ADMIT = "portbridge.admit"


server = module_server(api_key=KEY)
worker = module_worker("lm-admission", "--expose", "tests.support.lm_commands")


def prepare(worker, server, session: str, model: str, rate_limit: dict | None = None, **lm_args) -> None:
    args = {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY, **lm_args}
    if rate_limit is not None:
        args["rate_limit"] = rate_limit
    worker.call("configure_lm", args, session_id=session)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p", "replace": True},
                session_id=session)


class Gate:
    """A ``portbridge.admit`` callback that records each admission, with how many requests the server had seen."""

    def __init__(self, server, answer=lambda args: {"admitted": True}) -> None:
        self.server = server
        self.answer = answer
        self.seen: list[tuple[dict, int]] = []

    def __call__(self, args):
        self.seen.append((args, len(self.server.seen)))
        return self.answer(args)


def execute(worker, session: str, question: str, gate=None, **kw):
    callbacks = {ADMIT: gate} if gate is not None else None
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": question}},
                            session_id=session, callbacks=callbacks, **kw)
    return pending.wait(60), pending


def lm_calls(pending) -> list[dict]:
    return [e["data"] for e in pending.events if e["event"] == "lm_call"]


def test_every_attempt_is_admitted_first_and_reported_after(worker, server):
    prepare(worker, server, "adm-basic", "adm-basic", {"requests_per_minute": 600, "burst": 2})
    gate = Gate(server)
    start = len(server.seen)
    reply, pending = execute(worker, "adm-basic", "Admit me?", gate, timeout_ms=30_000)
    assert reply["success"], reply
    assert [n for _, n in gate.seen] == [start]  # asked before the server saw anything
    assert len(server.seen) == start + 1
    args = gate.seen[0][0]
    assert args["model"] == "openai/adm-basic" and args["limits"] == {"requests_per_minute": 600, "burst": 2}
    prompt_chars = sum(len(m["content"]) for m in server.seen[-1].messages)
    assert args["estimated_tokens"] == -(-prompt_chars // 4)
    callback = next(e["data"] for e in pending.events if e["event"] == "callback")
    assert callback["name"] == ADMIT and 0 < callback["timeout_ms"] <= 30_000  # out of the request's budget
    (event,) = lm_calls(pending)  # sent without notify: the LM has a rate limit
    usage = reply["result"]["usage"]["openai/adm-basic"]
    assert event == {"model": "openai/adm-basic", "prompt_tokens": usage["prompt_tokens"],
                     "completion_tokens": usage["completion_tokens"], "cost_usd": None,
                     "duration_us": event["duration_us"], "cached": False, "program_id": "p", "error": None}
    assert event["duration_us"] > 0
    kinds = [e["event"] for e in pending.events]
    assert kinds.index("callback") < kinds.index("lm_call")


def test_each_of_n_completions_and_a_streamed_call_are_admitted(worker, server):
    prepare(worker, server, "adm-n", "adm-n", {"requests_per_minute": 100_000})
    gate = Gate(server)
    start = len(server.seen)
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": "three?"}, "lm": {"n": 3}},
                            session_id="adm-n", callbacks={ADMIT: gate})
    reply = pending.wait(30)
    assert reply["success"] and len(server.seen) - start == 3
    assert [n - start for _, n in gate.seen] == [0, 1, 2]
    (event,) = lm_calls(pending)  # one call, its three completions together
    assert event["prompt_tokens"] == reply["result"]["usage"]["openai/adm-n"]["prompt_tokens"] > 0
    gate = Gate(server)
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": "streamed?"},
                                                "stream": True}, session_id="adm-n", callbacks={ADMIT: gate})
    reply = pending.wait(30)
    assert reply["success"] and len(gate.seen) == 1 and server.seen[-1].stream
    kinds = [e["event"] for e in pending.events]
    assert kinds[0] == "callback" and "chunk" in kinds and kinds[-1] == "lm_call"


def test_the_bridge_retries_a_429_asking_admission_again_and_dspy_does_not(worker, server):
    """num_retries 2 against a provider that always refuses: 3 attempts, 3 admissions, 3 events, no more."""
    prepare(worker, server, "adm-429", "fail-429", {"requests_per_minute": 6000}, num_retries=2)
    gate = Gate(server)
    start = len(server.seen)
    reply, pending = execute(worker, "adm-429", "Again?", gate)
    assert not reply["success"] and reply["error"]["category"] == "lm_rate_limit"
    assert len(server.seen) - start == 3 == len(gate.seen)
    assert [n - start for _, n in gate.seen] == [0, 1, 2]  # each attempt admitted before it was sent
    events = lm_calls(pending)
    assert [(e["error"]["category"], e["error"]["retry_after_s"]) for e in events] == [("lm_rate_limit", 0.0)] * 3
    assert all(e["prompt_tokens"] == 0 and e["cost_usd"] is None for e in events)


def test_other_retryable_failures_are_retried_by_the_bridge_only(worker, server):
    prepare(worker, server, "adm-500", "fail-500", {"tokens_per_minute": 100_000}, num_retries=1)
    gate = Gate(server)
    start = len(server.seen)
    reply, pending = execute(worker, "adm-500", "Server down?", gate)
    assert reply["error"]["category"] == "lm_unavailable"
    assert len(server.seen) - start == 2 == len(gate.seen)  # DSPy alone would have made 2 per admission
    assert [e["error"]["code"] for e in lm_calls(pending)] == ["server_error"] * 2


def test_a_providers_retry_after_is_waited_out_and_the_call_succeeds(worker, server):
    """The provider refuses the first 2 attempts with Retry-After 0.2 s: the bridge waits, asks, tries again."""
    prepare(worker, server, "adm-throttled", "throttled-2-200", {"requests_per_minute": 100_000}, num_retries=2)
    gate = Gate(server)
    started = time.monotonic()
    reply, pending = execute(worker, "adm-throttled", "Patience?", gate)
    assert reply["success"], reply
    assert time.monotonic() - started >= 0.4  # both pauses were waited
    assert len(gate.seen) == 3
    events = lm_calls(pending)
    assert [e["error"] and (e["error"]["category"], e["error"]["retry_after_s"]) for e in events] == \
        [("lm_rate_limit", 0.2), ("lm_rate_limit", 0.2), None]
    assert events[-1]["prompt_tokens"] > 0


def test_no_retry_when_its_pause_would_pass_the_deadline(worker, server):
    server.limit_rate(1, 60)
    try:
        prepare(worker, server, "adm-late", "adm-late", {"requests_per_minute": 100_000}, num_retries=3)
        assert execute(worker, "adm-late", "first", Gate(server))[0]["success"]
        reply, pending = execute(worker, "adm-late", "second", Gate(server), timeout_ms=20_000)
    finally:
        server.limit_rate(None)
    assert reply["error"]["category"] == "lm_rate_limit"  # the provider's answer, not the deadline's timeout
    assert len(lm_calls(pending)) == 1 and lm_calls(pending)[0]["error"]["retry_after_s"] > 20


def test_admission_waits_come_out_of_the_deadline(worker, server):
    prepare(worker, server, "adm-slow", "adm-slow", {"requests_per_minute": 60})
    release = threading.Event()
    start = len(server.seen)
    reply, pending = execute(worker, "adm-slow", "Too slow?", Gate(server, lambda args: release.wait(10) and None),
                             timeout_ms=2000)
    release.set()
    # The deadline answers (deadline_exceeded), or the admission's wait, bounded by the same deadline, ends
    # first (admission_refused): a timeout either way, and nothing was sent to the provider.
    assert reply["error"]["category"] == "timeout"
    assert reply["error"]["code"] in ("deadline_exceeded", "admission_refused")
    assert len(server.seen) == start
    (asked,) = [e["data"] for e in pending.events if e["event"] == "callback"]
    assert asked["name"] == ADMIT and asked["timeout_ms"] <= 2000  # it could wait no longer than the request


def test_cancel_abandons_a_waiting_admission(worker, server):
    prepare(worker, server, "adm-cancel", "adm-cancel", {"requests_per_minute": 60})
    asked, release = threading.Event(), threading.Event()

    def hold(args):
        asked.set()
        release.wait(10)
        return {"admitted": True}

    start = len(server.seen)
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": "cancel me"}},
                            session_id="adm-cancel", callbacks={ADMIT: hold})
    assert asked.wait(10)
    assert worker.call("cancel", {"request_id": pending.id})["cancelled"]
    assert pending.wait(10)["error"]["category"] == "cancelled"
    release.set()
    assert len(server.seen) == start


@pytest.mark.parametrize("answer,category", [
    ({"admitted": False}, "overloaded"), ("yes", "overloaded"),
])
def test_an_admission_that_is_not_admitted_true_fails_the_call(worker, server, answer, category):
    prepare(worker, server, "adm-refused", "adm-refused", {"requests_per_minute": 60})
    start = len(server.seen)
    reply, pending = execute(worker, "adm-refused", "Refused?", Gate(server, lambda args: answer))
    assert (reply["error"]["category"], reply["error"]["code"]) == (category, "admission_refused")
    assert len(server.seen) == start
    assert [e["error"]["code"] for e in lm_calls(pending)] == ["admission_refused"]


def test_an_admission_error_fails_the_call_with_its_category(worker, server):
    prepare(worker, server, "adm-error", "adm-error", {"requests_per_minute": 60})

    def refuse(args):
        raise RuntimeError("the limiter is gone")

    reply, _ = execute(worker, "adm-error", "Error?", refuse)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("execution", "admission_refused")
    assert "the limiter is gone" in reply["error"]["message"]


def test_calls_in_threads_dspy_starts_are_admitted_on_the_request(worker, server):
    prepare(worker, server, "adm-evaluate", "adm-evaluate", {"requests_per_minute": 100_000})
    gate = Gate(server)
    devset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": "x"}} for i in range(6)]
    pending = worker.submit("evaluate_program", {"program_id": "p", "devset": devset, "num_threads": 3},
                            session_id="adm-evaluate", callbacks={ADMIT: gate})
    reply = pending.wait(60)
    assert reply["success"] and len(gate.seen) == 6
    events = lm_calls(pending)
    assert len(events) == 6 and {e["program_id"] for e in events} == {"p"}


def test_an_optimiser_on_several_threads_has_every_call_admitted(worker, server):
    prepare(worker, server, "adm-optimize", "adm-optimize", {"requests_per_minute": 100_000})
    gate = Gate(server)
    start = len(server.seen)
    trainset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": f"a{i}"}} for i in range(4)]
    pending = worker.submit("optimize_program", {
        "program_id": "p", "optimizer": "BootstrapFewShotWithRandomSearch", "trainset": trainset,
        "options": {"num_candidate_programs": 1, "max_bootstrapped_demos": 1, "num_threads": 2}},
        session_id="adm-optimize", callbacks={ADMIT: gate}, timeout_ms=120_000)
    reply = pending.wait(120)
    assert reply["success"], reply
    calls = len(server.seen) - start
    assert calls > 0 and len(gate.seen) == calls == len(lm_calls(pending))


def test_lm_call_events_are_opt_in_without_a_rate_limit(worker, server):
    prepare(worker, server, "adm-notify", "adm-notify")
    reply, pending = execute(worker, "adm-notify", "Quiet?")
    assert reply["success"] and not [e for e in pending.events if e["event"] in ("lm_call", "callback")]
    reply, pending = execute(worker, "adm-notify", "Loud?", notify=["lm_call", "something_else"])
    assert reply["success"] and [e["error"] for e in lm_calls(pending)] == [None]
    assert not [e for e in pending.events if e["event"] == "callback"]


def test_an_sdk_command_using_the_session_lm_asks_too(worker, server):
    """Admission lives in the LM layer: no DSPy program is needed for a call to be admitted and reported."""
    prepare(worker, server, "adm-sdk", "adm-sdk", {"requests_per_minute": 600})
    gate = Gate(server)
    pending = worker.submit("lm_commands.ask", {"prompt": "Hello from a command"}, session_id="adm-sdk",
                            callbacks={ADMIT: gate})
    reply = pending.wait(30)
    assert reply["success"] and "adm-sdk says" in reply["result"]
    assert len(gate.seen) == 1
    (event,) = lm_calls(pending)
    assert event["program_id"] is None and event["prompt_tokens"] > 0
    outside = worker.call("lm_commands.ask_from_own_thread", {"prompt": "From nowhere"}, session_id="adm-sdk")
    assert outside == {"error": {"category": "execution", "code": "lm_call_outside_request"}}


def test_the_python_clients_pacer_keeps_a_provider_limit_with_no_429(worker, server):
    """The server allows 20 calls per second; the LM's limit is 10 a second; 12 calls at once get no 429."""
    server.limit_rate(20, 1.0)
    server.stats(reset=True)
    try:
        prepare(worker, server, "adm-paced", "adm-paced", {"requests_per_minute": 600})
        worker.call("create_program", {"signature": "question -> answer", "program_id": "p", "replace": True})
        worker.call("configure_lm", {"model": "openai/adm-paced", "api_base": server.base_url, "api_key": KEY,
                                     "rate_limit": {"requests_per_minute": 600}})
        started = time.monotonic()
        pending = [worker.submit("execute_program", {"program_id": "p", "inputs": {"question": f"paced {i}"}})
                   for i in range(12)]
        replies = [p.wait(60) for p in pending]
        took = time.monotonic() - started
        stats = server.stats()
    finally:
        server.limit_rate(None)
    assert all(r["success"] for r in replies)
    assert stats["responses_429"] == 0 and stats["completions"] == 12
    assert took >= 1.0  # 12 starts paced at 10 a second (the first at once) span at least 1.1 s
