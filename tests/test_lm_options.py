"""Per-call LM options (``execute_program {"lm": {...}}``): what plain DSPy's per-call config sends, for that call only.

Each case runs the same program in plain DSPy (in this process) with
``program(..., config=options)`` and through a real worker with ``lm:
options``, against one loopback server, and compares the request bodies the
server received. Then the options must not outlive their call: the session's
next call, and calls running at the same time in other sessions, send the
LM's own settings.
"""

from __future__ import annotations

import json

import dspy
import pytest

from tests.support.dspy_workers import error_of, module_server, module_worker

KEY = "sk-options"
BASE = {"temperature": 0.2, "max_tokens": 300}  # the session LM's own settings


server = module_server(api_key=KEY)
worker = module_worker("lm-options")


def bodies(server, start: int) -> list[dict]:
    return [seen.body for seen in server.seen[start:]]


def configure(worker, server, session: str, model: str) -> None:
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0, **BASE}, session_id=session)


CASES = {
    "temperature-and-max-tokens": ("Predict", {"temperature": 0.9, "max_tokens": 50}),
    "top-p": ("Predict", {"top_p": 0.5}),
    "stop-string": ("Predict", {"stop": "\n\nEND"}),
    "stop-list": ("ChainOfThought", {"stop": ["END", "STOP"]}),
    "n-completions": ("Predict", {"n": 3}),  # DSPy raises the temperature for n > 1 itself
    "rollout-id": ("ChainOfThought", {"rollout_id": 7, "temperature": 1.0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_call_options_send_what_plain_dspy_per_call_config_sends(worker, server, case):
    module, options = CASES[case]
    model = f"options-{case}"
    plain = getattr(dspy, module)("question -> answer")
    lm = dspy.LM(f"openai/{model}", api_base=server.base_url, api_key=KEY, num_retries=0, cache=False, **BASE)
    start = len(server.seen)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = plain(question="What is per-call config?", config=dict(options))
    expected = bodies(server, start)

    session = f"options-{case}"
    configure(worker, server, session, model)
    worker.call("create_program", {"signature": "question -> answer", "module": module, "program_id": "p"},
                session_id=session)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "What is per-call config?"},
                                             "lm": options}, session_id=session)
    assert bodies(server, start) == expected and expected
    assert result["outputs"] == dict(prediction.items())
    sent = json.dumps(expected)
    for key, value in options.items():  # the options did reach the wire (rollout_id only keys DSPy's cache)
        if key == "n":
            assert len(expected) == value  # DSPy asks for each completion separately
        elif key != "rollout_id":
            assert json.dumps(value)[1:-1] in sent, key


def test_options_never_outlive_their_call_nor_reach_concurrent_calls(worker, server):
    """The session's next call, and calls running meanwhile in other sessions, send the LM's own settings."""
    model = "options-leak"
    sessions = [f"leak-{i}" for i in range(6)]
    for session in sessions:
        configure(worker, server, session, model)
        worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=session)
    start = len(server.seen)
    pending = []
    for i, session in enumerate(sessions * 3):
        options = {"temperature": 1.5, "max_tokens": 7} if i % 2 else None
        args = {"program_id": "p", "inputs": {"question": f"call {i} {'tuned' if options else 'plain'}"}}
        pending.append(worker.submit("execute_program", {**args, "lm": options} if options else args,
                                     session_id=session))
    assert all(p.wait(30)["success"] for p in pending)
    received = bodies(server, start)
    assert len(received) == len(pending)
    for body in received:
        question = body["messages"][-1]["content"]
        wanted = (1.5, 7) if "tuned" in question else (BASE["temperature"], BASE["max_tokens"])
        assert (body["temperature"], body.get("max_tokens", body.get("max_completion_tokens"))) == wanted, question
    described = worker.call("lm_usage", {}, session_id=sessions[0])["lm"]
    assert (described["temperature"], described["max_tokens"]) == (BASE["temperature"], BASE["max_tokens"])


def test_unknown_or_out_of_range_options_are_refused_before_any_lm_call(worker, server):
    configure(worker, server, "options-bad", "options-bad")
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id="options-bad")
    start = len(server.seen)
    for options, path, reason in (({"seed": 1}, "args.lm.seed", "additionalProperties"),
                                  ({"temperature": 2.5}, "args.lm.temperature", "maximum"),
                                  ({"n": 0}, "args.lm.n", "minimum"),
                                  ({"top_p": -0.1}, "args.lm.top_p", "minimum"),
                                  ({"stop": ["a", "b", "c", "d", "e"]}, "args.lm.stop", "maxItems"),
                                  ({"stop": [""]}, "args.lm.stop[0]", "minLength"),
                                  ({"stop": 5}, "args.lm.stop", "type"),
                                  ({"max_tokens": "10"}, "args.lm.max_tokens", "type"),
                                  ({"api_base": "http://elsewhere"}, "args.lm.api_base", "additionalProperties")):
        error = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "q"}, "lm": options},
                         session_id="options-bad")
        assert (error["category"], error["code"], error["details"]["path"], error["details"]["reason"]) == \
            ("validation", "invalid_args", path, reason), options
    assert len(server.seen) == start
