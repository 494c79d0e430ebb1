"""Pipelines as data through a real worker: declaring, running, tracing, tuning, exporting, replaying.

The offline LM and the offline embedder keep these fast and deterministic;
what a pipeline sends an LM, compared with the hand-written module, is
tests/test_dspy_pipeline_parity.py's subject.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import OpenAIServer, completion_text

CORPUS = ["Paris is the capital of France.", "The Seine flows through Paris.", "Berlin is the capital of Germany.",
          "Elixir runs on the BEAM.", "DSPy programs are built from modules."]
MULTI_HOP = {"module": "Pipeline", "signature": "question -> answer", "steps": [
    {"name": "hop", "repeat": 3, "collect": {"context": "search.passages", "queries": "generate_query.query"},
     "steps": [
         {"name": "generate_query", "module": "ChainOfThought", "signature": "context, question -> query",
          "inputs": {"context": "hop.context"}},
         {"name": "search", "retrieve": {"index_id": "kb", "query": "generate_query.query", "k": 1}}]},
    {"name": "generate_answer", "module": "ChainOfThought", "signature": "context, question -> answer",
     "inputs": {"context": "hop.context"}}]}
TWO_STEPS = {"module": "Pipeline", "signature": "question -> answer", "steps": [
    {"name": "classify", "signature": "question -> topic"},
    {"name": "respond", "module": "ChainOfThought", "signature": "question, topic -> answer",
     "inputs": {"topic": "classify.topic"}}]}
TRAIN = [{"inputs": {"question": f"What is {i} + {i}?"}, "outputs": {"answer": str(2 * i)}} for i in range(6)]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-pipeline")) as w:
        w.call("configure_lm", {"model": "offline"})
        w.call("configure_embedder", {"model": "offline", "dimensions": 64})
        w.call("create_index", {"index_id": "kb", "corpus": CORPUS})
        yield w


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as s:
        yield s


def create(worker, session: str, declaration: dict, program_id: str = "p") -> dict:
    return worker.call("create_program", {**declaration, "program_id": program_id}, session_id=session)


def test_a_multi_hop_pipeline_describes_runs_and_traces_its_steps(worker):
    s = "multi-hop"
    described = create(worker, s, MULTI_HOP)
    assert described["module"] == "Pipeline" and described["demos"] == 0
    assert described["predictors"] == ["generate_query.predict", "generate_answer.predict"]  # one module per step
    hop, answer = described["steps"]
    assert hop["steps"][0]["inputs"] == {"context": "hop.context", "question": "question"}  # defaults made explicit
    assert described["outputs"] == {"answer": "generate_answer.answer"}  # the last step that has it
    assert [p["program_id"] for p in worker.call("list_programs", {}, session_id=s)["programs"]] == ["p"]

    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Where is Paris?"},
                                             "trace": True}, session_id=s)
    assert set(result["outputs"]) == {"answer"} and result["usage"]["offline"]["lm_calls"] == 4
    trace = result["trace"]
    assert [(t["step"], t.get("iteration")) for t in trace] == [
        ("generate_query", 0), ("search", 0), ("generate_query", 1), ("search", 1), ("generate_query", 2),
        ("search", 2), ("generate_answer", None)]
    searched = [t["outputs"]["passages"] for t in trace if t["step"] == "search"]
    # Inside the group a step sees what was collected so far; after it, the whole flattened list.
    assert [t["inputs"]["context"] for t in trace if t["step"] == "generate_query"] == \
        [[], searched[0], searched[0] + searched[1]]
    assert trace[-1]["inputs"] == {"context": sum(searched, []), "question": "Where is Paris?"}
    assert trace[1]["inputs"] == {"query": trace[0]["outputs"]["query"]}
    assert trace[-1]["outputs"]["answer"] == result["outputs"]["answer"]
    plain = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Where is Paris?"}},
                        session_id=s)
    assert "trace" not in plain and plain["outputs"] == result["outputs"]


def test_collected_values_and_any_step_output_can_be_pipeline_outputs(worker):
    s = "outputs"
    declaration = {**MULTI_HOP, "signature": {"inputs": {"question": "str"},
                                              "outputs": {"answer": "str", "queries": "list[str]",
                                                          "reasoning": "str"}},
                   "outputs": {"queries": "hop.queries", "reasoning": "generate_query.reasoning"}}
    described = create(worker, s, declaration)
    assert described["outputs"] == {"answer": "generate_answer.answer", "queries": "hop.queries",
                                    "reasoning": "generate_query.reasoning"}
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Where is Paris?"},
                                             "trace": True}, session_id=s)
    queries = [t["outputs"]["query"] for t in result["trace"] if t["step"] == "generate_query"]
    assert result["outputs"]["queries"] == queries and len(queries) == 3
    assert result["outputs"]["reasoning"] == result["trace"][4]["outputs"]["reasoning"]  # the last repetition's


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_a_repeated_step_streams_on_every_repetition(worker, adapter):
    s = f"stream-{adapter}"
    create(worker, s, {"module": "Pipeline", "signature": "question -> answer", "adapter": adapter, "steps": [
        {"name": "g", "repeat": 3, "collect": {"drafts": "draft.answer"},
         "steps": [{"name": "draft", "signature": "question -> answer"}]},
        {"name": "final", "signature": "question, drafts -> answer", "inputs": {"drafts": "g.drafts"}}]})
    events: list = []
    worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Hi?"}, "stream": True},
                session_id=s, on_event=events.append)
    ends = [e["data"]["predictor"] for e in events if e["event"] == "chunk" and e["data"]["last"]]
    assert ends == ["draft"] * 3 + ["final"]  # one module, one predictor name, streamed each time


def step(i: int, **extra) -> dict:
    return {"name": f"s{i}", "signature": "question -> answer", **extra}


def with_steps(*steps, **extra) -> dict:
    return {"module": "Pipeline", "signature": "question -> answer", "steps": list(steps), **extra}


BAD = {
    "unknown step": (with_steps(step(0, inputs={"question": "nope.answer"})), "unknown_step",
                     "args.steps[0].inputs.question"),
    "a field the step does not produce": (with_steps(step(0), step(1, inputs={"question": "s0.query"})),
                                          "unknown_field", "args.steps[1].inputs.question"),
    "a forward reference": (with_steps(step(0, inputs={"question": "s1.answer"}), step(1)), "forward_reference",
                            "args.steps[0].inputs.question"),
    "a cycle on itself": (with_steps(step(0, inputs={"question": "s0.answer"})), "forward_reference",
                          "args.steps[0].inputs.question"),
    "a cycle through a group": (with_steps({"name": "g", "repeat": 2, "steps": [
        step(0, inputs={"question": "s1.answer"}), step(1)]}), "forward_reference",
        "args.steps[0].steps[0].inputs.question"),
    "an input the pipeline lacks": (with_steps({"name": "s0", "signature": "question, topic -> answer"}),
                                    "unknown_reference", "args.steps[0].inputs.topic"),
    "an input the step lacks": (with_steps(step(0, inputs={"topic": "question"})), "unknown_input",
                                "args.steps[0].inputs.topic"),
    "not a reference": (with_steps(step(0, inputs={"question": "a.b.c"})), "bad_reference",
                        "args.steps[0].inputs.question"),
    "repeat over 10": (with_steps({"name": "g", "repeat": 11, "steps": [step(0)]}), "invalid_args",
                       "args.steps[0].repeat"),
    "more than 32 steps": (with_steps(*[step(i) for i in range(33)]), "invalid_args", "args.steps"),
    "more than 32 steps with groups": (with_steps({"name": "g", "repeat": 2, "steps": [step(i) for i in range(31)]},
                                                  step(31)), "too_many_steps", "args.steps"),
    "duplicate names": (with_steps(step(0), step(0)), "duplicate_step", "args.steps[1].name"),
    "a group named as a step": (with_steps({"name": "s0", "repeat": 2, "steps": [step(0)]}), "duplicate_step",
                                "args.steps[0].steps[0].name"),
    "a dspy.Module attribute": (with_steps({"name": "forward", "signature": "question -> answer"}),
                                "reserved_step_name", "args.steps[0].name"),
    "nested groups": (with_steps({"name": "g", "repeat": 2, "steps": [{"name": "h", "repeat": 2,
                                                                       "steps": [step(0)]}]}),
                      "bad_step", "args.steps[0].steps[0]"),
    "collecting from outside the group": (with_steps(step(0), {"name": "g", "repeat": 2, "steps": [step(1)],
                                                               "collect": {"x": "s0.answer"}}),
                                          "bad_collect", "args.steps[1].collect.x"),
    "an output nothing produces": (with_steps(step(0), signature="question -> verdict"), "unbound_output",
                                   "args.outputs.verdict"),
    "an output of another type": (with_steps({"name": "r", "retrieve": {"index_id": "kb"}},
                                             outputs={"answer": "r.passages"}), "type_mismatch",
                                  "args.outputs.answer"),
    "an output the signature lacks": (with_steps(step(0), outputs={"topic": "s0.answer"}), "unknown_output",
                                      "args.outputs.topic"),
    "a module option that does not apply": (with_steps(step(0, max_iters=3)), "option_not_applicable",
                                            "args.steps[0]"),
    "a bad step signature": (with_steps({"name": "s0", "signature": "question -> "}), "bad_signature",
                             "args.steps[0].signature"),
    "a step's module option out of range": (with_steps(step(0, module="BestOfN", N=99, threshold=1,
                                                            reward_fn={"callback": "r"})), "invalid_args",
                                            "args.steps[0].N"),
    "a pipeline as a step": (with_steps(step(0, module="Pipeline")), "invalid_args", "args.steps[0].module"),
    "no steps": ({"module": "Pipeline", "signature": "question -> answer"}, "missing_option", "args.steps"),
    "steps on another module": ({"module": "Predict", "signature": "question -> answer", "steps": [step(0)]},
                                "option_not_applicable", "args"),
    "tools on the pipeline": (with_steps(step(0), tools=[{"name": "t"}]), "option_not_applicable", "args"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_declarations_are_validation_errors_that_name_the_path(worker, case):
    declaration, code, path = BAD[case]
    err = error_of(worker, "create_program", declaration, session_id="bad")
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", code, path), err
    assert path in err["message"]


def test_nothing_reaches_the_lm_before_a_declaration_is_checked(worker):
    s = "bad-before-lm"
    worker.call("configure_lm", {"model": "openai/never", "api_base": "http://127.0.0.1:9/v1", "api_key": "k",
                                 "num_retries": 0}, session_id=s)
    assert error_of(worker, "create_program", BAD["a forward reference"][0], session_id=s)["category"] == \
        "validation"
    create(worker, s, TWO_STEPS)
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"topic": "x"}}, session_id=s)
    assert (err["category"], err["code"]) == ("validation", "unknown_input")
    assert worker.call("lm_usage", {}, session_id=s)["models"] == {}
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "x"}}, session_id=s)
    assert err["category"] == "lm_unavailable"  # the first LM call, once the inputs were fine
    worker.call("create_program", {"signature": "question -> answer", "program_id": "single"}, session_id=s)
    err = error_of(worker, "execute_program", {"program_id": "single", "inputs": {"question": "x"}, "trace": True},
                   session_id=s)
    assert (err["code"], err["details"]["path"]) == ("trace_not_applicable", "args.trace")


OPTIMIZERS = {
    "LabeledFewShot": {"k": 2},
    "BootstrapFewShot": {"max_bootstrapped_demos": 2, "max_labeled_demos": 1},
    "BootstrapFewShotWithRandomSearch": {"num_candidate_programs": 2, "max_bootstrapped_demos": 1,
                                         "num_threads": 1},
    "MIPROv2": {"auto": None, "num_candidates": 2, "num_trials": 3, "max_bootstrapped_demos": 1,
                "max_labeled_demos": 1, "minibatch": False, "num_threads": 1},
    "GEPA": {"max_metric_calls": 30, "reflection_minibatch_size": 2, "num_threads": 1, "component_selector": "all"},
    "SIMBA": {"bsize": 4, "max_steps": 2, "num_candidates": 2, "max_demos": 1, "num_threads": 1},
}
ADVICE = ('[[ ## discussion ## ]]\nBoth modules matter.\n\n[[ ## module_advice ## ]]\n{"classify": "Name the topic '
          'in one word.", "respond.predict": "Answer with the number only."}\n\n[[ ## completed ## ]]')


def sampling_lm(worker, server, session: str) -> None:
    """SIMBA needs an LM whose samples differ: the loopback server, answering in turn as one of three models,
    except where the prompt carries the advice (which SIMBA's rule step asks it for, for every predictor)."""
    turns = itertools.count()

    def answer(messages):
        text = json.dumps(messages)
        if "module_advice" in text:
            return ADVICE
        return completion_text("m0" if "number only" in text else f"m{next(turns) % 3}", messages)

    server.script("sampling", *[answer] * 1000)
    worker.call("configure_lm", {"model": "openai/sampling", "api_base": server.base_url, "api_key": "k",
                                 "num_retries": 0}, session_id=session)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimiser_tunes_every_predictor_and_the_result_exports(worker, server, name):
    s = f"opt-{name}"
    if name == "SIMBA":
        sampling_lm(worker, server, s)
    create(worker, s, TWO_STEPS)
    first = {e["inputs"]["question"]: worker.call("execute_program", {"program_id": "p", "inputs": e["inputs"]},
                                                  session_id=s)["outputs"]["answer"] for e in TRAIN}

    def better(args):  # any answer other than the untuned pipeline's (SIMBA: the sampled model m0's) scores
        answer = args["prediction"]["answer"]
        good = answer.startswith("m0") if name == "SIMBA" else answer != first[args["example"]["inputs"]["question"]]
        return {"score": float(good), "feedback": "good" if good else "answer otherwise"}

    before = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]["state"]["predictors"]
    result = worker.call("optimize_program", {"program_id": "p", "optimizer": name, "trainset": TRAIN,
                                              "metric": {"callback": "better"}, "options": OPTIMIZERS[name]},
                         session_id=s, timeout_ms=120_000, callbacks={"better": better})
    predictors = ["classify", "respond.predict"]  # a Predict attribute is itself the predictor
    assert sorted(result["instructions"]) == predictors
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    after = doc["state"]["predictors"]
    assert sorted(after) == predictors
    changed = [p for p in predictors if after[p] != before[p]]
    assert changed == predictors, f"{name} left {sorted(set(predictors) - set(changed))} untouched"
    imported = worker.call("import_program", {"program": doc, "program_id": "copy"}, session_id=s)
    assert imported["demos"] == result["demos"] and imported["predictors"] == predictors
    assert worker.call("export_program", {"program_id": "copy"}, session_id=s)["program"]["state"] == doc["state"]


def test_evaluate_runs_the_whole_pipeline_on_every_example(worker):
    s = "evaluate"
    create(worker, s, TWO_STEPS)
    worker.call("optimize_program", {"program_id": "p", "optimizer": "LabeledFewShot", "trainset": TRAIN[:2]},
                session_id=s)
    result = worker.call("evaluate_program", {"program_id": "p", "devset": TRAIN, "num_threads": 2}, session_id=s)
    assert result["count"] == 6 and result["errors"] == 0
    assert result["usage"]["offline"]["lm_calls"] == 12  # two steps per example
    assert all(set(r["outputs"]) == {"answer"} for r in result["results"])


def test_agent_and_best_of_n_steps_call_the_client_back(worker):
    s = "callbacks"
    add = {"name": "add", "description": "Adds two integers.",
           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                          "required": ["a", "b"]}}
    declaration = with_steps(
        {"name": "agent", "module": "ReAct", "signature": "question -> answer", "tools": [add], "max_iters": 2},
        {"name": "polish", "module": "BestOfN", "base_module": "ChainOfThought", "N": 2, "threshold": 1.0,
         "reward_fn": {"callback": "reward"}, "signature": "question, draft -> answer",
         "inputs": {"draft": "agent.answer"}})
    described = create(worker, s, declaration)
    assert described["predictors"] == ["agent.react", "agent.extract.predict", "polish.module.predict"]
    calls = []

    def tool(args):
        calls.append(("add", args))
        return args["a"] + args["b"]

    def reward(args):
        calls.append(("reward", args))
        return 1.0

    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "What is 2 + 3?"},
                                             "trace": True}, session_id=s, callbacks={"add": tool, "reward": reward})
    assert [t["step"] for t in result["trace"]] == ["agent", "polish"]
    assert "trajectory" in result["trace"][0]["outputs"]
    rewards = [args for kind, args in calls if kind == "reward"]
    assert rewards and rewards[0]["inputs"]["draft"] == result["trace"][0]["outputs"]["answer"]
    assert result["outputs"]["answer"] == result["trace"][1]["outputs"]["answer"]


def test_a_pipeline_survives_a_fresh_python_through_its_export(worker, tmp_path):
    s = "replay"
    create(worker, s, MULTI_HOP)
    worker.call("optimize_program", {"program_id": "p", "optimizer": "BootstrapFewShot", "trainset": [
        {"inputs": {"question": "Where is Paris?"}, "outputs": {"answer": "x"}}], "metric": {"callback": "ok"},
        "options": {"max_bootstrapped_demos": 1, "max_labeled_demos": 0}}, session_id=s,
        callbacks={"ok": lambda args: True})
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    assert all(len(p["demos"]) == 1 for p in doc["state"]["predictors"].values())
    # A bootstrapped demo of a step holds what flowed (here a list of passages in a str field): it imports back.
    assert isinstance(doc["state"]["predictors"]["generate_answer.predict"]["demos"][0]["context"], list)
    question = {"question": "What flows through Paris?"}
    before = worker.call("execute_program", {"program_id": "p", "inputs": question}, session_id=s)
    with dspy_worker(tmp_path) as fresh:
        fresh.call("configure_lm", {"model": "offline"}, session_id=s)
        fresh.call("configure_embedder", {"model": "offline", "dimensions": 64}, session_id=s)
        fresh.call("create_index", {"index_id": "kb", "corpus": CORPUS}, session_id=s)
        imported = fresh.call("import_program", {"program": doc}, session_id=s)
        assert imported["program_id"] == "p" and imported["demos"] == 2 and imported["steps"] == doc["options"]["steps"]
        after = fresh.call("execute_program", {"program_id": "p", "inputs": question}, session_id=s)
        # A client whose maps keep no order (Elixir's) sends the document back with every map's keys moved.
        fresh.call("import_program", {"program": reversed_maps(doc), "program_id": "q"}, session_id=s)
        again = fresh.call("execute_program", {"program_id": "q", "inputs": question}, session_id=s)
    assert after["outputs"] == again["outputs"] == before["outputs"]


def reversed_maps(value):
    if isinstance(value, dict):
        return {k: reversed_maps(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_maps(v) for v in value]
    return value


def tampered(doc: dict, change) -> dict:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def test_an_import_document_is_checked_as_a_declaration(worker):
    s = "import-checks"
    create(worker, s, MULTI_HOP)
    worker.call("optimize_program", {"program_id": "p", "optimizer": "LabeledFewShot", "trainset": [
        {"inputs": {"question": "Where is Paris?"}, "outputs": {"answer": "In France."}}]}, session_id=s)
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    cases = [
        (lambda d: d["options"]["steps"][1]["inputs"].update(context="nope.passages"), "unknown_step",
         "args.program.options.steps[1].inputs.context"),
        (lambda d: d["options"].update(retrieve={"index_id": "kb"}), "bad_program_document", "args.program.options"),
        (lambda d: d["state"]["predictors"].pop("generate_answer.predict"), "program_mismatch",
         "args.program.state.predictors"),
        (lambda d: d["state"]["predictors"]["generate_query.predict"]["demos"].append({"rogue": 1}), "bad_demo",
         "args.program.state.predictors.generate_query.predict.demos[1].rogue"),
        (lambda d: d["state"]["predictors"]["generate_query.predict"]["demos"].append({"question": 1}), "wrong_type",
         "args.program.state.predictors.generate_query.predict.demos[1].question"),
    ]
    for change, code, path in cases:
        err = error_of(worker, "import_program", {"program": tampered(doc, change), "program_id": "q"}, session_id=s)
        assert (err["category"], err["code"], err["details"].get("path")) == ("validation", code, path), err
    assert worker.call("import_program", {"program": doc, "program_id": "q"}, session_id=s)["demos"] == 2


def test_the_readme_pipeline_is_created_and_runs_as_written(worker):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (block,) = re.findall(r"<!-- tested: tests/test_dspy_pipeline.py [^\n]*-->\n```json\n(.*?)```", readme, re.S)
    described = create(worker, "readme", json.loads(block))
    assert described["predictors"] == ["generate_query.predict", "generate_answer.predict"]
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "What flows through Paris?"},
                                             "trace": True}, session_id="readme")
    assert [t["step"] for t in result["trace"]] == ["generate_query", "search"] * 2 + ["generate_answer"]
