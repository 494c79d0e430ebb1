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
# A token limit never reached: with one, every call is reported (its tokens correct the estimate); under a
# request limit alone only failed attempts are, unless the request asks (notify).
TOKENS = {"tokens_per_minute": 100_000_000}


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
    prepare(worker, server, "adm-basic", "adm-basic", {"requests_per_minute": 600, "burst": 2, **TOKENS})
    gate = Gate(server)
    start = len(server.seen)
    reply, pending = execute(worker, "adm-basic", "Admit me?", gate, timeout_ms=30_000)
    assert reply["success"], reply
    assert [n for _, n in gate.seen] == [start]  # asked before the server saw anything
    assert len(server.seen) == start + 1
    args = gate.seen[0][0]
    assert args["model"] == "openai/adm-basic" and args["limits"] == {"requests_per_minute": 600, "burst": 2, **TOKENS}
    prompt_chars = sum(len(m["content"]) for m in server.seen[-1].messages)
    assert args["estimated_tokens"] == -(-prompt_chars // 4)
    callback = next(e["data"] for e in pending.events if e["event"] == "callback")
    assert callback["name"] == ADMIT and 0 < callback["timeout_ms"] <= 30_000  # out of the request's budget
    (event,) = lm_calls(pending)  # sent without notify: the LM has a token limit
    usage = reply["result"]["usage"]["openai/adm-basic"]
    assert event == {"model": "openai/adm-basic", "prompt_tokens": usage["prompt_tokens"],
                     "completion_tokens": usage["completion_tokens"], "cost_usd": None,
                     "duration_us": event["duration_us"], "cached": False, "program_id": "p",
                     "estimated_tokens": args["estimated_tokens"], "error": None}
    assert event["duration_us"] > 0
    kinds = [e["event"] for e in pending.events]
    assert kinds.index("callback") < kinds.index("lm_call")


def test_each_of_n_completions_and_a_streamed_call_are_admitted(worker, server):
    prepare(worker, server, "adm-n", "adm-n", {"requests_per_minute": 100_000, **TOKENS})
    gate = Gate(server)
    start = len(server.seen)
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": "three?"}, "lm": {"n": 3}},
                            session_id="adm-n", callbacks={ADMIT: gate})
    reply = pending.wait(30)
    assert reply["success"] and len(server.seen) - start == 3
    assert [n - start for _, n in gate.seen] == [0, 1, 2]
    (event,) = lm_calls(pending)  # one call, its three completions together
    assert event["prompt_tokens"] == reply["result"]["usage"]["openai/adm-n"]["prompt_tokens"] > 0
    assert event["estimated_tokens"] == sum(args["estimated_tokens"] for args, _ in gate.seen)
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
    prepare(worker, server, "adm-throttled", "throttled-2-200", TOKENS, num_retries=2)
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
    prepare(worker, server, "adm-evaluate", "adm-evaluate", {"requests_per_minute": 100_000, **TOKENS})
    gate = Gate(server)
    devset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": "x"}} for i in range(6)]
    pending = worker.submit("evaluate_program", {"program_id": "p", "devset": devset, "num_threads": 3},
                            session_id="adm-evaluate", callbacks={ADMIT: gate})
    reply = pending.wait(60)
    assert reply["success"] and len(gate.seen) == 6
    events = lm_calls(pending)
    assert len(events) == 6 and {e["program_id"] for e in events} == {"p"}


def test_an_optimiser_on_several_threads_has_every_call_admitted(worker, server):
    prepare(worker, server, "adm-optimize", "adm-optimize", {"requests_per_minute": 100_000, **TOKENS})
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


def test_a_successful_call_under_a_request_limit_alone_is_reported_only_when_asked(worker, server):
    """Its event would tell the client nothing it paces on (no tokens to correct, no 429): a failed attempt is
    always reported, a successful call only for a request that asks (notify)."""
    prepare(worker, server, "adm-quiet", "adm-quiet", {"requests_per_minute": 100_000})
    reply, pending = execute(worker, "adm-quiet", f"quiet {time.time_ns()}?", Gate(server))
    assert reply["success"] and lm_calls(pending) == []
    reply, pending = execute(worker, "adm-quiet", f"asked {time.time_ns()}?", Gate(server), notify=["lm_call"])
    (event,) = lm_calls(pending)
    assert event["error"] is None and event["estimated_tokens"] > 0


def test_lm_call_events_are_opt_in_without_a_rate_limit(worker, server):
    prepare(worker, server, "adm-notify", "adm-notify")
    reply, pending = execute(worker, "adm-notify", "Quiet?")
    assert reply["success"] and not [e for e in pending.events if e["event"] in ("lm_call", "callback")]
    reply, pending = execute(worker, "adm-notify", "Loud?", notify=["lm_call", "something_else"])
    assert reply["success"] and [e["error"] for e in lm_calls(pending)] == [None]
    assert not [e for e in pending.events if e["event"] == "callback"]


def test_an_sdk_command_using_the_session_lm_asks_too(worker, server):
    """Admission lives in the LM layer: no DSPy program is needed for a call to be admitted and reported."""
    prepare(worker, server, "adm-sdk", "adm-sdk", {"requests_per_minute": 600, **TOKENS})
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


# -- leases (protocol 1.3): the client lets the next calls of a model start without asking ----------------------


def leasing(server, lease: dict) -> Gate:
    """A gate that admits and grants ``lease`` each time it is asked."""
    return Gate(server, lambda args: {"admitted": True, "lease": dict(lease)})


def run_many(worker, session: str, gate: Gate, n: int, prefix: str, **kw) -> list[dict]:
    """``n`` calls one after the other, each its own request (a lease outlives the request that got it)."""
    replies = []
    for i in range(n):
        reply, pending = execute(worker, session, f"{prefix} {i:03d}?", gate, **kw)
        assert reply["success"], reply
        replies.append((reply, pending))
    return replies


def stats_leases(worker) -> dict:
    return worker.call("stats")["leases"]


def test_a_lease_lets_the_next_calls_start_without_asking(worker, server):
    prepare(worker, server, "lease-basic", "lease-basic", {"requests_per_minute": 100_000, **TOKENS})
    gate = leasing(server, {"starts": 3, "valid_ms": 60_000})
    before = stats_leases(worker)
    start = len(server.seen)
    done = run_many(worker, "lease-basic", gate, 6, f"leased {time.time_ns()}", notify=["lm_call"])
    assert len(server.seen) - start == 6
    # Asked by the 1st call (leased 3 more), and the 5th (its lease used up).
    assert [n - start for _, n in gate.seen] == [0, 4]
    asked = [any(e["event"] == "callback" for e in pending.events) for _, pending in done]
    assert asked == [True, False, False, False, True, False]
    # Every call is still reported when asked, with the estimate it was admitted (or leased) under.
    estimates = [lm_calls(pending)[0]["estimated_tokens"] for _, pending in done]
    assert all(e > 0 for e in estimates) and estimates[0] == gate.seen[0][0]["estimated_tokens"]
    after = stats_leases(worker)
    assert (after["granted"] - before["granted"], after["taken"] - before["taken"]) == (6, 4)


def test_tokens_a_leased_call_did_not_use_go_back_with_the_next_admission(worker, server):
    # A token limit with a lease: a call that used no more than its estimate sends no lm_call
    # event (none was asked for); what it did not use goes back, once, with the next admission.
    prepare(worker, server, "lease-returns", "lease-returns", TOKENS, max_tokens=500)
    gate = leasing(server, {"starts": 2, "valid_ms": 60_000})
    done = run_many(worker, "lease-returns", gate, 5, f"returns {time.time_ns()}")
    assert [lm_calls(pending) for _, pending in done] == [[]] * 5
    asks = [args for args, _ in gate.seen]
    assert len(asks) == 2 and "returned_tokens" not in asks[0]
    # The three calls before the second ask (one asked, two leased): their estimates less what they used.
    def used(reply) -> int:
        usage = reply["result"]["usage"]["openai/lease-returns"]
        return usage["prompt_tokens"] + usage["completion_tokens"]

    estimates = 3 * asks[0]["estimated_tokens"]  # questions of one length: calls of one estimate
    assert asks[1]["returned_tokens"] == estimates - sum(used(r) for r, _ in done[:3]) > 0
    # Asked for, the event is sent as before, and its call's tokens do not go back.
    reply, pending = execute(worker, "lease-returns", f"returns {time.time_ns()} asked?", gate, notify=["lm_call"])
    assert reply["success"] and len(lm_calls(pending)) == 1


def test_a_lease_ends_when_it_expires(worker, server):
    prepare(worker, server, "lease-expiry", "lease-expiry", {"requests_per_minute": 100_000})
    gate = leasing(server, {"starts": 5, "valid_ms": 1})
    for i in range(3):
        reply, _ = execute(worker, "lease-expiry", f"expiring {time.time_ns()} {i}?", gate)
        assert reply["success"]
        time.sleep(0.002)  # the lease's millisecond passes (counted from when the worker asked)
    assert len(gate.seen) == 3


def test_leased_calls_stay_within_the_leased_tokens(worker, server):
    prepare(worker, server, "lease-tokens", "lease-tokens", {"tokens_per_minute": 1_000_000})
    # Questions of one length make calls of one estimate: a lease of 2 starts' worth of tokens and
    # 5 starts covers 2 calls.
    probe = Gate(server, lambda args: {"admitted": True})
    reply, _ = execute(worker, "lease-tokens", f"tokens {time.time_ns() % 10**8:08d} x?", probe)
    estimate = probe.seen[0][0]["estimated_tokens"]
    gate = leasing(server, {"starts": 5, "valid_ms": 60_000, "tokens": 2 * estimate})
    for i in range(4):
        reply, _ = execute(worker, "lease-tokens", f"tokens {time.time_ns() % 10**8:08d} {i}?", gate)
        assert reply["success"]
    assert [args["estimated_tokens"] for args, _ in gate.seen] == [estimate, estimate]


@pytest.mark.parametrize("lease", [
    {"starts": 0, "valid_ms": 60_000}, {"starts": 3}, {"starts": 3, "valid_ms": 0}, {"starts": True, "valid_ms": 9},
    {"starts": 3, "valid_ms": 60_001}, {"starts": 3, "valid_ms": 100, "tokens": -1}, "three", None,
])
def test_a_lease_of_another_shape_is_ignored_and_the_call_admitted(worker, server, lease):
    prepare(worker, server, "lease-bad", "lease-bad", {"requests_per_minute": 100_000})
    gate = Gate(server, lambda args: {"admitted": True, "lease": lease})
    run_many(worker, "lease-bad", gate, 2, f"bad lease {time.time_ns()}")
    assert len(gate.seen) == 2


def test_a_lease_is_for_the_limits_it_was_granted_under(worker, server):
    prepare(worker, server, "lease-limits-a", "lease-limits", {"requests_per_minute": 100_000})
    prepare(worker, server, "lease-limits-b", "lease-limits", {"requests_per_minute": 50_000})
    gate = leasing(server, {"starts": 5, "valid_ms": 60_000})
    execute(worker, "lease-limits-a", f"limits {time.time_ns()}?", gate)
    reply, _ = execute(worker, "lease-limits-b", f"limits {time.time_ns()}?", gate)
    assert reply["success"] and len(gate.seen) == 2  # same model, other limits: asked


def test_a_providers_429_voids_the_lease(worker, server):
    """A leased call refused by the provider: the worker's next attempt of that model asks the client again."""
    prepare(worker, server, "lease-429", "lease-429", {"requests_per_minute": 100_000}, num_retries=0)
    gate = leasing(server, {"starts": 10, "valid_ms": 60_000})
    server.limit_rate(1, 60)
    try:
        start = len(server.seen)
        first, _ = execute(worker, "lease-429", f"first {time.time_ns()}?", gate)
        second, pending = execute(worker, "lease-429", f"second {time.time_ns()}?", gate)  # leased: refused
        third, _ = execute(worker, "lease-429", f"third {time.time_ns()}?", gate)
    finally:
        server.limit_rate(None)
    assert first["success"] and second["error"]["category"] == third["error"]["category"] == "lm_rate_limit"
    assert len(server.seen) - start == 3
    assert [n - start for _, n in gate.seen] == [0, 2]  # the second was leased; the third asked
    assert not [e for e in pending.events if e["event"] == "callback"]


def test_a_call_of_a_request_already_answered_takes_no_leased_start(worker, server):
    """A command sends two prompts in turn to a slow model; the request's deadline passes during the first. The
    second call finds its request answered: it takes no leased start (it asks, and asking fails at once), and the
    provider never sees it."""
    prepare(worker, server, "lease-late", "slow-1000", {"requests_per_minute": 100_000})
    gate = leasing(server, {"starts": 10, "valid_ms": 60_000})
    assert execute(worker, "lease-late", f"warm {time.time_ns()}?", gate)[0]["success"]  # holds a lease of 10
    taken = stats_leases(worker)["taken"]
    start = len(server.seen)
    tag = time.time_ns()
    pending = worker.submit("lm_commands.ask_each", {"prompts": [f"late {tag} first", f"late {tag} second"]},
                            session_id="lease-late", callbacks={ADMIT: gate}, timeout_ms=500)
    assert pending.wait(30)["error"]["category"] == "timeout"
    deadline = time.monotonic() + 30
    while worker.call("stats")["running"] and time.monotonic() < deadline:  # the first call runs on
        time.sleep(0.01)
    assert worker.call("stats")["running"] == 0
    prompts = [m["content"] for seen in server.seen[start:] for m in seen.messages]
    assert not [p for p in prompts if f"late {tag} second" in p]
    # The first call took a leased start (unless a loaded machine let the deadline pass before it began).
    assert stats_leases(worker)["taken"] - taken == len(server.seen) - start <= 1
    assert len(gate.seen) == 1
