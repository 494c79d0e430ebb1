"""Parity: the same program in plain DSPy (in this process) and through a real worker, against one LM server.

For every case the loopback server records the exact request bodies it
received from each side; they must be equal (messages, sampling settings,
streaming options: everything), and so must the outputs. The plain side is
written as a DSPy user would write it (a pydantic model for an object field,
``dspy.History``, ``dspy.JSONAdapter``, ``dspy.streamify``, the optimisers'
own classes); the worker side is the same program sent as data.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal, Optional

import dspy
import pydantic
import pytest

from tests.support.dspy_workers import dspy_worker
from tests.support.openai_server import OpenAIServer
from tests.support.sdk_programs import MultiHop, local_search

KEY = "sk-parity"
OWNER_ANSWER = '[[ ## owner ## ]]\n{"team": "core", "backup": null}\n\n[[ ## level ## ]]\nhigh\n\n' \
               '[[ ## minutes ## ]]\n15\n\n[[ ## completed ## ]]'

# DSPy's own string form with types: plain DSPy parses it, the worker reads it as data.
TYPED = "question, context: list[str] -> answer: int, tags: List[str], level: Literal['low', 'high'], " \
        "note: str | None, scores: dict[str, float]"
TYPED_ANSWER = '[[ ## reasoning ## ]]\nTwo items.\n\n[[ ## answer ## ]]\n2\n\n[[ ## tags ## ]]\n["a", "b"]\n\n' \
               '[[ ## level ## ]]\nlow\n\n[[ ## note ## ]]\nNone\n\n[[ ## scores ## ]]\n{"a": 0.5}\n\n' \
               '[[ ## completed ## ]]'


class Owner(pydantic.BaseModel):
    team: str
    backup: Optional[str] = None  # noqa: UP007 - as a user of Python 3.9+ DSPy writes it


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(api_key=KEY, chunk_chars=3) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-parity"), "--expose", "tests.support.sdk_programs") as w:
        yield w


def plain_lm(server, model: str):
    return dspy.LM(f"openai/{model}", api_base=server.base_url, api_key=KEY, num_retries=0, cache=False)


def bodies(server, start: int) -> list[str]:
    """The request bodies received since ``start``, canonical JSON, in order."""
    return [json.dumps(seen.body, sort_keys=True) for seen in server.seen[start:]]


def run_plain(server, model: str, program, inputs: dict, adapter=None, script=()):
    server.script(model, *script)
    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model), adapter=adapter or dspy.ChatAdapter()):
        prediction = program(**inputs)
    outputs = {k: pydantic_core_json(v) for k, v in prediction.items()}
    return bodies(server, start), outputs


def pydantic_core_json(value):
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


def run_worker(worker, server, model: str, create: dict, inputs: dict, script=(), stream=False):
    session = f"parity-{model}"
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("create_program", {**create, "program_id": "p"}, session_id=session)
    server.script(model, *script)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": inputs, "stream": stream},
                         session_id=session)
    return bodies(server, start), result["outputs"]


CASES = {
    "predict": (lambda: dspy.Predict("question -> answer"), {"signature": "question -> answer"},
                {"question": "What is DSPy?"}, None, ()),
    "chain-of-thought": (lambda: dspy.ChainOfThought("question -> answer"),
                         {"signature": "question -> answer", "module": "ChainOfThought"},
                         {"question": "Why is the sky blue?"}, None, ()),
    "typed": (
        lambda: dspy.Predict(dspy.make_signature(
            {"ticket": (str, dspy.InputField(desc="the customer's words")),
             "owner": (Owner, dspy.OutputField()),
             "level": (Literal["low", "high"], dspy.OutputField()),
             "minutes": (int, dspy.OutputField(desc="minutes to fix"))},
            "Triage the ticket.", signature_name="Triage")),
        {"signature": {"name": "Triage", "instructions": "Triage the ticket.",
                       "inputs": {"ticket": {"type": "str", "desc": "the customer's words"}},
                       "outputs": {"owner": {"type": {"object": {"team": "str", "backup": "optional[str]"},
                                                      "name": "Owner"}},
                                   "level": {"type": {"literal": ["low", "high"]}},
                                   "minutes": {"type": "int", "desc": "minutes to fix"}}}},
        {"ticket": "The app crashes"}, None, (OWNER_ANSWER,)),
    "history": (
        lambda: dspy.Predict(dspy.make_signature({"history": (dspy.History, dspy.InputField()),
                                                  "question": (str, dspy.InputField()),
                                                  "answer": (str, dspy.OutputField())})),
        {"signature": {"inputs": {"history": "history", "question": "str"}, "outputs": {"answer": "str"}}},
        {"question": "And in French?",
         "history": {"messages": [{"question": "Say hello", "answer": "Hello"}]}}, None, ()),
    "typed-string": (lambda: dspy.ChainOfThought(TYPED), {"signature": TYPED, "module": "ChainOfThought"},
                     {"question": "How many?", "context": ["one", "two"]}, None, (TYPED_ANSWER,)),
    "typed-string-json": (lambda: dspy.Predict("question -> answer: int"),
                          {"signature": "question -> answer: int", "adapter": "json"},
                          {"question": "How many?"}, dspy.JSONAdapter(), ('{"answer": 7}',)),
    "json-adapter": (lambda: dspy.Predict("question -> answer"),
                     {"signature": "question -> answer", "adapter": "json"},
                     {"question": "What is JSON?"}, dspy.JSONAdapter(), ()),
    "xml-adapter": (lambda: dspy.ChainOfThought("question -> answer"),
                    {"signature": "question -> answer", "module": "ChainOfThought", "adapter": "xml"},
                    {"question": "What is XML?"}, dspy.XMLAdapter(), ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_program_sends_and_returns_what_plain_dspy_does(worker, server, case):
    make, create, inputs, adapter, script = CASES[case]
    model = f"parity-{case}"
    plain_inputs = dict(inputs)
    if "history" in plain_inputs:
        plain_inputs["history"] = dspy.History(**plain_inputs["history"])
    plain_requests, plain_outputs = run_plain(server, model, make(), plain_inputs, adapter, script)
    requests, outputs = run_worker(worker, server, model, create, inputs, script)
    assert requests == plain_requests
    assert outputs == plain_outputs
    assert len(requests) >= 1


def test_streaming_sends_what_plain_dspy_streamify_sends(worker, server):
    model = "parity-stream"
    program = dspy.ChainOfThought("question -> answer")
    start = len(server.seen)

    async def consume():
        streaming = dspy.streamify(program, stream_listeners=[
            dspy.streaming.StreamListener(signature_field_name="answer")])
        final = None
        async for item in streaming(question="Why stream?"):
            if isinstance(item, dspy.Prediction):
                final = item
        return final

    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        prediction = asyncio.run(consume())
    plain_requests = bodies(server, start)
    requests, outputs = run_worker(worker, server, model, {"signature": "question -> answer",
                                                           "module": "ChainOfThought"},
                                   {"question": "Why stream?"}, stream=True)
    assert requests == plain_requests and json.loads(requests[0])["stream"] is True
    assert outputs == dict(prediction.items())


TRAIN = [{"question": f"Question {i}?", "answer": f"parity-opt says answer for Question {i}?" if i % 2 else "no"}
         for i in range(6)]


def exact(example, prediction, trace=None, pred_name=None, pred_trace=None):
    return dspy.evaluate.answer_exact_match(example, prediction)


def with_feedback(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """As the worker's exact_match with feedback (GEPA reads the text)."""
    ok = float(dspy.evaluate.answer_exact_match(example, prediction))
    verdict = "matches" if ok >= 1 else "does not match"
    return dspy.Prediction(score=ok, feedback=f"answer: {prediction.answer!r} {verdict} the expected "
                                              f"{example.answer!r} (exact_match)")


OPTIMIZERS = {
    "BootstrapFewShot": (lambda lm: dspy.teleprompt.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2,
                                                                     max_labeled_demos=2, metric_threshold=1.0),
                         {"max_bootstrapped_demos": 2, "max_labeled_demos": 2}, {}),
    "BootstrapFewShotWithRandomSearch": (
        lambda lm: dspy.teleprompt.BootstrapFewShotWithRandomSearch(
            metric=exact, num_candidate_programs=2, max_bootstrapped_demos=1, num_threads=1),
        {"num_candidate_programs": 2, "max_bootstrapped_demos": 1, "num_threads": 1}, {}),
    "COPRO": (lambda lm: dspy.teleprompt.COPRO(prompt_model=lm, metric=exact, breadth=2, depth=1),
              {"breadth": 2, "depth": 1, "num_threads": 1}, {"eval_kwargs": {"num_threads": 1}}),
    "SIMBA": (lambda lm: dspy.teleprompt.SIMBA(metric=exact, prompt_model=lm, bsize=4, max_steps=1,
                                               num_candidates=2, num_threads=1),
              {"bsize": 4, "max_steps": 1, "num_candidates": 2, "num_threads": 1}, {}),
    "MIPROv2": (lambda lm: dspy.teleprompt.MIPROv2(metric=exact, prompt_model=lm, task_model=lm, auto=None,
                                                   num_candidates=2, num_threads=1, max_bootstrapped_demos=1,
                                                   max_labeled_demos=1, verbose=False, track_stats=False),
                {"auto": None, "num_candidates": 2, "num_trials": 2, "num_threads": 1, "minibatch": False,
                 "max_bootstrapped_demos": 1, "max_labeled_demos": 1}, {"num_trials": 2, "minibatch": False}),
    "GEPA": (lambda lm: dspy.teleprompt.GEPA(metric=with_feedback, reflection_lm=lm, max_metric_calls=16,
                                             reflection_minibatch_size=2, num_threads=1),
             {"max_metric_calls": 16, "reflection_minibatch_size": 2, "num_threads": 1}, {}),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_optimiser_sends_and_learns_what_plain_dspy_does(worker, server, name):
    make, options, compile_kwargs = OPTIMIZERS[name]
    model = "parity-opt"
    lm = plain_lm(server, model)
    start = len(server.seen)
    trainset = [dspy.Example(**e).with_inputs("question") for e in TRAIN]
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = make(lm).compile(dspy.Predict("question -> answer"), trainset=trainset, **compile_kwargs)
    plain_requests = sorted(bodies(server, start))

    session = f"parity-opt-{name}"
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=session)
    start = len(server.seen)
    worker.call("optimize_program", {
        "program_id": "p", "optimizer": name, "metric": "exact_match", "options": options,
        "trainset": [{"inputs": {"question": e["question"]}, "outputs": {"answer": e["answer"]}} for e in TRAIN]},
        session_id=session, timeout_ms=120_000)
    assert plain_requests and sorted(bodies(server, start)) == plain_requests
    learned = worker.call("export_program", {"program_id": "p"}, session_id=session)["program"]["state"]
    plain_state = {"instructions": compiled.signature.instructions,
                   "demos": [{k: v for k, v in dict(d).items()} for d in compiled.demos]}
    assert learned["predictors"]["self"] == json.loads(json.dumps(plain_state))


def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


ADD_TOOL = {"name": "add", "description": "Adds two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                           "required": ["a", "b"]}}
REACT_SCRIPT = (
    '[[ ## next_thought ## ]]\nI add.\n\n[[ ## next_tool_name ## ]]\nadd\n\n[[ ## next_tool_args ## ]]\n'
    '{"a": 2, "b": 3}\n\n[[ ## completed ## ]]',
    '[[ ## next_thought ## ]]\nDone.\n\n[[ ## next_tool_name ## ]]\nfinish\n\n[[ ## next_tool_args ## ]]\n{}\n\n'
    '[[ ## completed ## ]]',
    "[[ ## reasoning ## ]]\n2 + 3 = 5\n\n[[ ## answer ## ]]\n5\n\n[[ ## completed ## ]]",
)


def test_react_with_client_tools_sends_and_returns_what_plain_dspy_with_python_tools_does(worker, server):
    model = "parity-react"
    plain_requests, plain_outputs = run_plain(server, model, dspy.ReAct("question -> answer", tools=[add],
                                                                        max_iters=4),
                                              {"question": "What is 2 + 3?"}, script=REACT_SCRIPT)
    session = f"parity-{model}"
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("create_program", {"program_id": "p", "signature": "question -> answer", "module": "ReAct",
                                   "tools": [ADD_TOOL], "max_iters": 4}, session_id=session)
    server.script(model, *REACT_SCRIPT)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "What is 2 + 3?"}},
                         session_id=session, callbacks={"add": lambda args: add(**args)})
    assert bodies(server, start) == plain_requests and len(plain_requests) == 3
    assert result["outputs"] == plain_outputs and plain_outputs["trajectory"]["observation_0"] == 5


# -- the operator's own dspy.Module (bridge.sdk's @program), in plain DSPy and through the worker -----------

def own_module_session(worker, server, model: str, session: str, hops: int) -> None:
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("create_program", {"module": "sdk_programs.MultiHop", "init": {"hops": hops}, "program_id": "mh"},
                session_id=session)


SEARCH = {"search": lambda args: local_search(args["query"])}  # in plain DSPy the module searches itself


def test_an_exposed_dspy_module_sends_and_returns_what_it_does_in_plain_dspy(worker, server):
    model = "parity-own-module"
    plain_requests, plain_outputs = run_plain(server, model, MultiHop(hops=2), {"question": "Who wrote DSPy?"})
    own_module_session(worker, server, model, "parity-own", 2)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "mh", "inputs": {"question": "Who wrote DSPy?"}},
                         session_id="parity-own", callbacks=SEARCH)
    assert bodies(server, start) == plain_requests and len(plain_requests) == 3
    assert result["outputs"] == plain_outputs


def test_per_call_lm_options_reach_every_predictor_of_an_exposed_module_as_in_plain_dspy(worker, server):
    model = "parity-own-options"
    options = {"temperature": 0.3, "max_tokens": 300}
    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model).copy(**options), adapter=dspy.ChatAdapter()):
        MultiHop(hops=1)(question="Who wrote DSPy?")
    plain_requests = bodies(server, start)
    own_module_session(worker, server, model, "parity-own-options", 1)
    start = len(server.seen)
    worker.call("execute_program", {"program_id": "mh", "inputs": {"question": "Who wrote DSPy?"}, "lm": options},
                session_id="parity-own-options", callbacks=SEARCH)
    requests = bodies(server, start)
    assert requests == plain_requests and len(requests) == 2
    assert all(json.loads(r)["temperature"] == 0.3 for r in requests)


def test_an_exposed_dspy_module_optimises_every_predictor_as_plain_dspy_does(worker, server):
    model = "parity-own-opt"
    trainset = [{"question": f"Question {i}?", "answer": "anything"} for i in range(3)]
    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        compiled = dspy.teleprompt.BootstrapFewShot(
            metric=lambda example, prediction, trace=None: True, max_bootstrapped_demos=2, max_labeled_demos=0,
        ).compile(MultiHop(hops=2), trainset=[dspy.Example(**e).with_inputs("question") for e in trainset])
    plain_requests = sorted(bodies(server, start))
    own_module_session(worker, server, model, "parity-own-opt", 2)
    start = len(server.seen)
    worker.call("optimize_program", {
        "program_id": "mh", "optimizer": "BootstrapFewShot", "metric": {"callback": "metric"},
        "options": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
        "trainset": [{"inputs": {"question": e["question"]}, "outputs": {"answer": e["answer"]}} for e in trainset]},
        session_id="parity-own-opt", callbacks={**SEARCH, "metric": lambda args: True}, timeout_ms=120_000)
    assert plain_requests and sorted(bodies(server, start)) == plain_requests
    learned = worker.call("export_program", {"program_id": "mh"}, session_id="parity-own-opt")["program"]["state"]
    plain_state = {name: {"instructions": p.signature.instructions, "demos": [dict(d) for d in p.demos]}
                   for name, p in compiled.named_predictors()}
    assert learned["predictors"] == json.loads(json.dumps(plain_state))

    # DSPy's own saved state of the plain module loads into a fresh one of the worker's, which then
    # sends what the plain optimised module sends.
    worker.call("create_program", {"module": "sdk_programs.MultiHop", "init": {"hops": 2}, "program_id": "saved"},
                session_id="parity-own-opt")
    state = json.loads(json.dumps(compiled.dump_state()))
    loaded = worker.call("import_program", {"program_id": "saved", "dspy_state": state}, session_id="parity-own-opt")
    assert loaded["demos"] == 4 and loaded["dspy_state"]["predictors"] == 2
    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        expected = compiled(question="Who wrote DSPy?")
    plain_requests = bodies(server, start)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "saved", "inputs": {"question": "Who wrote DSPy?"}},
                         session_id="parity-own-opt", callbacks=SEARCH)
    assert bodies(server, start) == plain_requests and result["outputs"]["answer"] == expected.answer

