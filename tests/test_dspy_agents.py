"""DSPy agents, rewards and metrics whose code lives with the client (issue 11), through a real worker.

A ReAct program declares its tools as data; executing it calls them back
(``callback`` events answered by the Python client's callbacks). The
loopback LM server scripts a ReAct trajectory turn by turn, so the test sees
exactly which arguments the worker sends back and what the LM is told; the
offline LM drives a trajectory of its own. BestOfN and Refine ask a reward
callback; evaluate_program and optimize_program a metric callback.
"""

from __future__ import annotations

import json

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import OpenAIServer

KEY = "sk-agents-test-91c3"
ADD = {"name": "add", "description": "Adds two integers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"], "additionalProperties": False}}
LOOKUP = {"name": "lookup", "description": "Looks a word up in the dictionary.",
          "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}


def turn(thought: str, tool: str, args: dict) -> str:
    return (f"[[ ## next_thought ## ]]\n{thought}\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
            f"[[ ## next_tool_args ## ]]\n{json.dumps(args)}\n\n[[ ## completed ## ]]")


def extract(reasoning: str, answer: str) -> str:
    return f"[[ ## reasoning ## ]]\n{reasoning}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-agents")) as w:
        yield w


def session_with(worker, server, session: str, model: str, **create) -> None:
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p", **create},
                session_id=session)


def test_react_calls_the_declared_tool_back_and_returns_the_trajectory(worker, server):
    s, model = "react-http", "react-1"
    session_with(worker, server, s, model, module="ReAct", tools=[ADD, LOOKUP], max_iters=4)
    server.script(model, turn("I add them.", "add", {"a": 2, "b": 3}), turn("Done.", "finish", {}),
                  extract("2 + 3 is 5.", "5"))
    calls, events = [], []

    def add(args):
        calls.append(args)
        return {"sum": args["a"] + args["b"]}

    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "What is 2 + 3?"}},
                         session_id=s, callbacks={"add": add, "lookup": lambda args: "unused"},
                         on_event=events.append)
    assert calls == [{"a": 2, "b": 3}]  # the tool's arguments, exactly as the LM chose them
    asked = [e["data"] for e in events if e["event"] == "callback"]
    assert [(a["name"], a["args"]) for a in asked] == [("add", {"a": 2, "b": 3})]
    outputs = result["outputs"]
    assert outputs["answer"] == "5" and outputs["reasoning"] == "2 + 3 is 5."
    assert outputs["trajectory"] == {"thought_0": "I add them.", "tool_name_0": "add", "tool_args_0": {"a": 2, "b": 3},
                                     "observation_0": {"sum": 5}, "thought_1": "Done.", "tool_name_1": "finish",
                                     "tool_args_1": {}, "observation_1": "Completed."}
    # The LM saw the observation (JSON) in the next turn's trajectory.
    second = server.seen[start + 1].messages[-1]["content"]
    assert '[[ ## observation_0 ## ]]\n{"sum": 5}' in second


def test_bad_arguments_and_failing_tools_become_observations_the_lm_reads(worker, server):
    s, model = "react-bad", "react-2"
    session_with(worker, server, s, model, module="ReAct", tools=[ADD], max_iters=3)
    server.script(model, turn("Try.", "add", {"a": "two", "b": 3}), turn("Again.", "add", {"a": 2, "b": 3}),
                  turn("Stop.", "finish", {}), extract("r", "gave up"))
    calls = []

    def failing(args):
        calls.append(args)
        raise RuntimeError("the adder is broken")

    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "2 + 3?"}}, session_id=s,
                         callbacks={"add": failing})
    trajectory = result["outputs"]["trajectory"]
    assert calls == [{"a": 2, "b": 3}]  # schema-invalid arguments never reach the client
    assert trajectory["observation_0"].startswith("Execution error in add: ") and "a" in trajectory["observation_0"]
    assert trajectory["observation_1"].startswith("Execution error in add: ")
    assert "Traceback" not in json.dumps(trajectory)


def test_the_offline_lm_drives_a_trajectory_and_streams_between_callbacks(worker):
    s = "react-offline"
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p", "module": "ReAct",
                                   "tools": [ADD, LOOKUP]}, session_id=s)
    events = []
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "look up a word"},
                                             "stream": True},
                         session_id=s, callbacks={"lookup": lambda args: f"{args['word']}: a unit of language",
                                                  "add": lambda args: 0},
                         on_event=events.append)
    trajectory = result["outputs"]["trajectory"]
    assert trajectory["tool_name_0"] == "lookup" and trajectory["tool_name_1"] == "finish"
    assert trajectory["observation_0"] == "look up a word: a unit of language"
    kinds = [e["event"] if e["event"] != "chunk" else e["data"]["predictor"] for e in events]
    first_callback = kinds.index("callback")
    assert "react" in kinds[:first_callback] and "extract.predict" in kinds[first_callback:]


def test_bestofn_and_refine_ask_the_reward_callback(worker):
    s = "reward"
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    rewards = []

    def reward(args):
        rewards.append(args)
        return 0.25 * len(rewards)

    for module in ("BestOfN", "Refine"):
        rewards.clear()
        worker.call("create_program", {"signature": "question -> answer", "program_id": module, "module": module,
                                       "N": 3, "reward_fn": {"callback": "score"}, "threshold": 0.5},
                    session_id=s)
        result = worker.call("execute_program", {"program_id": module, "inputs": {"question": "Hi?"}},
                             session_id=s, callbacks={"score": reward})
        assert len(rewards) == 2  # the second attempt reaches the threshold
        assert all(set(r) == {"inputs", "prediction"} and r["inputs"] == {"question": "Hi?"} for r in rewards)
        assert result["outputs"] == rewards[1]["prediction"]  # the attempt the reward scored best


def test_metric_callbacks_score_evaluation_and_optimisation(worker):
    s = "metric"
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "qa"}, session_id=s)
    devset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": f"a{i}"}} for i in range(4)]
    seen = []

    def metric(args):
        seen.append(args)
        return {"score": 1.0, "feedback": "fine"} if args["example"]["inputs"]["question"] in ("q0", "q1") else False

    result = worker.call("evaluate_program", {"program_id": "qa", "devset": devset, "metric": {"callback": "m"},
                                              "num_threads": 2}, session_id=s, callbacks={"m": metric})
    assert result["score"] == 50.0 and result["metric"] == "m" and len(seen) == 4
    assert sorted(a["example"]["outputs"]["answer"] for a in seen) == ["a0", "a1", "a2", "a3"]
    assert all(set(a["prediction"]) == {"answer"} for a in seen)
    optimized = worker.call("optimize_program", {"program_id": "qa", "optimizer": "BootstrapFewShot",
                                                 "trainset": devset, "metric": {"callback": "m"},
                                                 "options": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}},
                            session_id=s, callbacks={"m": metric})
    assert optimized["bootstrapped"] == 2 and optimized["demos"] == 2


def test_undeclared_names_bad_declarations_and_missing_callbacks_fail_cleanly(worker):
    s = "bad"
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    for tools, code in (([{"name": "finish"}], "bad_tools"), ([ADD, ADD], "bad_tools"),
                        ([{"name": "x", "parameters": {"type": "object", "properties": {}, "oneOf": []}}],
                         "bad_tools"),
                        ([{"name": "x", "parameters": {"type": "string"}}], "bad_tools")):
        err = error_of(worker, "create_program", {"signature": "question -> answer", "module": "ReAct",
                                                  "tools": tools}, session_id=s)
        assert (err["category"], err["code"]) == ("validation", code)
    err = error_of(worker, "create_program", {"signature": "question -> answer", "module": "BestOfN", "N": 2,
                                              "threshold": 1}, session_id=s)
    assert err["code"] == "missing_option"
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p", "module": "ReAct",
                                   "tools": [ADD]}, session_id=s)
    # The client registered no function for the tool: the request fails with the client's category.
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "add"}}, session_id=s,
                   callbacks={})
    assert err["category"] == "not_found" and "no callback named 'add'" in err["message"]
    assert worker.call("ping")["pong"] is True


def test_an_undeclared_tool_the_lm_names_is_never_called_back(worker, server):
    s, model = "react-undeclared", "react-3"
    session_with(worker, server, s, model, module="ReAct", tools=[ADD], max_iters=3)
    rogue = turn("Escape.", "os_system", {"cmd": "touch pwned"})
    # ChatAdapter refuses the name (not in the tools' Literal), and so does DSPy's JSON fallback: the run
    # fails as it does in plain DSPy, and nothing is called back.
    server.script(model, rogue, rogue)
    events = []
    reply = worker.request("execute_program", {"program_id": "p", "inputs": {"question": "run a command"}},
                           session_id=s, callbacks={"add": lambda args: 0}, on_event=events.append)
    assert reply["error"]["category"] == "output_parse"
    assert [e for e in events if e["event"] == "callback"] == []


def test_gepa_reads_the_textual_feedback_of_a_metric_callback(worker, server):
    s = "gepa"
    session_with(worker, server, s, "gepa-1")
    trainset = [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": f"a{i}"}} for i in range(4)]
    start = len(server.seen)
    result = worker.call("optimize_program", {
        "program_id": "p", "optimizer": "GEPA", "trainset": trainset, "metric": {"callback": "judge"},
        "options": {"max_metric_calls": 12, "reflection_minibatch_size": 2, "num_threads": 1}},
        session_id=s, callbacks={"judge": lambda args: {"score": 0.0, "feedback": "MARK: expected "
                                                        + args["example"]["outputs"]["answer"]}})
    assert result["optimizer"] == "GEPA"
    # The reflection LM was shown the client's feedback.
    assert any("MARK: expected a" in json.dumps(seen.messages) for seen in server.seen[start:])
