"""``cost_usd``: DSPy's own price of every call, in every usage entry, although the worker keeps no history.

Plain DSPy (in this process, history on) prices each call in
``lm.history[-1]["cost"]``; the worker must report the same figure for the
same call, per reply, per session in ``lm_usage`` (summed), and in the
``lm_call`` event, and null where DSPy has no price for the model. Both run
against one loopback server that reports usage in its responses.
"""

from __future__ import annotations

import dspy
import pytest

from tests.support.dspy_workers import module_server, module_worker

KEY = "sk-cost"
PRICED = "gpt-4o-mini"  # in DSPy's price list
UNPRICED = "house-model-7b"  # a self-hosted name no price list knows


server = module_server(api_key=KEY)
worker = module_worker("lm-cost", own_cache=True)


def plain_costs(server, model: str, module: str, questions: list[str]) -> list:
    lm = dspy.LM(f"openai/{model}", api_base=server.base_url, api_key=KEY, num_retries=0, cache=False)
    program = getattr(dspy, module)("question -> answer")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        for question in questions:
            program(question=question)
    return [entry["cost"] for entry in lm.history]


def prepare(worker, server, session: str, model: str, module: str = "Predict", **lm_args) -> None:
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0, **lm_args}, session_id=session)
    worker.call("create_program", {"signature": "question -> answer", "module": module, "program_id": "p",
                                   "replace": True}, session_id=session)


def run(worker, session: str, question: str, **kw) -> tuple[dict, list[dict]]:
    pending = worker.submit("execute_program", {"program_id": "p", "inputs": {"question": question}},
                            session_id=session, notify=["lm_call"], **kw)
    reply = pending.wait(30)
    assert reply["success"], reply
    return reply["result"], [e["data"] for e in pending.events if e["event"] == "lm_call"]


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
def test_a_priced_model_costs_what_plain_dspy_says_per_reply_event_and_session(worker, server, module):
    questions = ["What does a call cost?", "And a longer question, with a few more words in it?"]
    expected = plain_costs(server, PRICED, module, questions)
    assert all(isinstance(c, float) and c > 0 for c in expected)
    session = f"cost-priced-{module}"
    prepare(worker, server, session, PRICED, module)
    for question, cost in zip(questions, expected):
        result, events = run(worker, session, question)
        assert result["usage"][f"openai/{PRICED}"]["cost_usd"] == pytest.approx(cost, rel=1e-12)
        assert [e["cost_usd"] for e in events] == [pytest.approx(cost, rel=1e-12)]
    report = worker.call("lm_usage", {}, session_id=session)
    assert report["models"][f"openai/{PRICED}"]["cost_usd"] == pytest.approx(sum(expected), rel=1e-12)
    assert report["models"][f"openai/{PRICED}"]["lm_calls"] == len(questions)
    assert report["cost_usd"] == pytest.approx(sum(expected), rel=1e-12)


def test_a_model_dspy_has_no_price_for_costs_null_everywhere(worker, server):
    assert plain_costs(server, UNPRICED, "Predict", ["Free?"]) == [None]
    prepare(worker, server, "cost-unpriced", UNPRICED)
    result, events = run(worker, "cost-unpriced", "Free?")
    usage = result["usage"][f"openai/{UNPRICED}"]
    assert usage["cost_usd"] is None and usage["prompt_tokens"] > 0 and usage["lm_calls"] == 1
    assert [e["cost_usd"] for e in events] == [None] and events[0]["prompt_tokens"] == usage["prompt_tokens"]
    report = worker.call("lm_usage", {"reset": True}, session_id="cost-unpriced")
    assert report["models"][f"openai/{UNPRICED}"]["cost_usd"] is None and report["cost_usd"] is None
    assert worker.call("lm_usage", {}, session_id="cost-unpriced")["models"] == {}


def test_a_session_with_priced_and_unpriced_models_sums_what_is_priced(worker, server):
    session = "cost-mixed"
    prepare(worker, server, session, UNPRICED)
    run(worker, session, "one")
    prepare(worker, server, session, PRICED)
    result, _ = run(worker, session, "two")
    report = worker.call("lm_usage", {}, session_id=session)
    assert report["models"][f"openai/{UNPRICED}"]["cost_usd"] is None
    assert report["cost_usd"] == pytest.approx(result["usage"][f"openai/{PRICED}"]["cost_usd"], rel=1e-12)


def test_evaluation_on_several_threads_costs_the_sum_of_its_calls(worker, server):
    """Calls DSPy makes in Evaluate's threads are priced into the request's usage too."""
    questions = [f"Evaluate question number {i}?" for i in range(6)]
    expected = plain_costs(server, PRICED, "Predict", questions)
    prepare(worker, server, "cost-evaluate", PRICED)
    devset = [{"inputs": {"question": q}, "outputs": {"answer": "x"}} for q in questions]
    pending = worker.submit("evaluate_program", {"program_id": "p", "devset": devset, "num_threads": 3},
                            session_id="cost-evaluate", notify=["lm_call"])
    reply = pending.wait(60)
    assert reply["success"], reply
    usage = reply["result"]["usage"][f"openai/{PRICED}"]
    assert usage["lm_calls"] == len(questions)
    assert usage["cost_usd"] == pytest.approx(sum(expected), rel=1e-9)
    events = [e["data"] for e in pending.events if e["event"] == "lm_call"]
    assert sorted(e["cost_usd"] for e in events) == pytest.approx(sorted(expected), rel=1e-12)
    assert {e["program_id"] for e in events} == {"p"}


def test_an_answer_from_dspys_cache_costs_nothing(worker, server):
    prepare(worker, server, "cost-cached", PRICED, cache=True)
    question = "Is this cached? (cost test)"
    first, first_events = run(worker, "cost-cached", question)
    calls = len(server.seen)
    second, second_events = run(worker, "cost-cached", question)
    assert len(server.seen) == calls  # the server was not asked again
    assert first_events[0]["cached"] is False and first_events[0]["cost_usd"] > 0
    assert second_events == [{**second_events[0], "cached": True, "cost_usd": None, "prompt_tokens": 0,
                              "completion_tokens": 0, "error": None}]
    assert second["usage"] == {}
