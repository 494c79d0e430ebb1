"""The DSPy backend through a real worker process and real frames, on the built-in offline LM."""

from __future__ import annotations

import time

import pytest

from bridge.backends.dspy import fieldtypes
from tests.support.dspy_workers import dspy_worker, error_of

DSPY_COMMANDS = {"configure_lm", "create_program", "execute_program", "list_programs", "get_program",
                 "delete_program", "export_program", "import_program", "optimize_program", "evaluate_program",
                 "lm_usage"}
TYPED = {
    "name": "Triage",
    "instructions": "Triage the support ticket.",
    "inputs": {"ticket": {"type": "str", "desc": "the customer's words"}, "customer": {"type": {
        "object": {"name": "str", "tier": {"type": {"literal": ["free", "pro"]}}}, "name": "Customer"}}},
    "outputs": {
        "priority": {"type": {"literal": ["low", "medium", "high"]}},
        "minutes": {"type": "int"},
        "confidence": {"type": "float"},
        "escalate": {"type": "bool"},
        "labels": {"type": "list[str]"},
        "scores": {"type": "dict[str, float]"},
        "note": {"type": "optional[str]"},
        "owner": {"type": {"object": {"team": "str", "backup": "optional[str]"}, "name": "Owner"}},
    },
}
TICKET = {"ticket": "The app crashes on login", "customer": {"name": "Ada", "tier": "pro"}}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-worker")) as w:
        w.call("configure_lm", {"model": "offline"})
        yield w


def test_ready_comes_before_dspy_and_an_early_command_waits_for_it(spawn):
    started = time.perf_counter()
    w = spawn()
    ready_s = time.perf_counter() - started
    assert "create_program" not in w.ready["commands"]  # backends register after ready
    early = w.submit("create_program", {"signature": "question -> answer", "program_id": "p"})
    ping = w.submit("ping")
    assert ping.wait(10)["success"]
    reply = early.wait(60)
    assert reply["success"], reply
    assert ping.received_ns < early.received_ns, "ping must not wait for the DSPy import"
    assert ready_s < 5
    dspy = w.call("describe")["backends"]["dspy"]
    assert dspy["state"] == "ready" and dspy["dspy_version"].startswith("3.4") and dspy["import_s"] > 0
    # No LM yet in this worker: a clear error that says how to configure one, before any work.
    err = error_of(w, "execute_program", {"program_id": "p", "inputs": {"question": "hi"}})
    assert (err["category"], err["code"]) == ("validation", "no_lm_configured")
    assert "configure_lm" in err["message"] and "offline" in err["message"]


def test_describe_documents_every_command_the_modules_and_the_limits(worker):
    d = worker.call("describe")
    for name in DSPY_COMMANDS:
        cmd = d["commands"][name]
        assert cmd["backend"] == "dspy" and cmd["args"]["type"] == "object" and cmd["description"]
    assert d["commands"]["configure_lm"]["args"]["properties"]["cache"]["default"] is False
    dspy = d["backends"]["dspy"]
    assert set(dspy["modules"]) == {"Predict", "ChainOfThought", "ReAct", "BestOfN", "Refine", "Pipeline"}
    assert set(dspy["pipeline"]["steps"]) == {"module", "retrieve", "group"}
    assert dspy["pipeline"]["limits"] == {"max_steps": 32, "max_repeat": 10}
    assert "CodeAct" in dspy["not_buildable"] and "ReAct" not in dspy["not_buildable"]
    assert set(dspy["optimizers"]) == {"LabeledFewShot", "BootstrapFewShot", "BootstrapFewShotWithRandomSearch",
                                       "MIPROv2", "COPRO", "SIMBA", "GEPA"}
    assert all(o["options"] and o["description"] for o in dspy["optimizers"].values())
    assert {"exact_match", "f1", "judge", "callback"} <= set(dspy["metrics"])
    assert set(dspy["adapters"]) == {"chat", "json", "xml", "two_step"}
    assert {"inputs", "streaming", "usage", "errors"} <= set(dspy["differences"])
    limits = dspy["limits"]
    assert limits["max_programs_per_scope"] > 0 and limits["max_trainset"] > 0 and limits["max_fields"] > 0


@pytest.mark.parametrize("command, args, path", [
    ("create_program", {"signature": "q -> a", "module": "CodeAct"}, "args.module"),
    ("create_program", {"signature": "q -> a", "module": "ReAct"}, "args.tools"),
    ("create_program", {"signature": "q -> a", "colour": "red"}, "args.colour"),
    ("execute_program", {"program_id": "x"}, "args.inputs"),
    ("execute_program", {"program_id": "../etc", "inputs": {}}, "args.program_id"),
    ("configure_lm", {"model": "offline", "temperature": 9}, "args.temperature"),
    ("configure_lm", {"model": "openai/x", "api_base": "file:///etc/passwd"}, "args.api_base"),
    ("optimize_program", {"program_id": "x", "optimizer": "MIPROv3", "trainset": [{}]}, "args.optimizer"),
    ("create_program", {"signature": "q -> a", "adapter": "yaml"}, "args.adapter"),
])
def test_bad_arguments_fail_validation_before_any_work(worker, command, args, path):
    err = error_of(worker, command, args, session_id="bad-args")
    assert err["category"] == "validation" and err["details"]["path"] == path


def test_program_lifecycle_in_a_session(worker):
    s = "lifecycle"
    made = worker.call("create_program", {"signature": TYPED, "program_id": "triage"}, session_id=s)
    assert made["module"] == "Predict" and made["signature"]["outputs"]["minutes"]["type"] == "int"
    auto = worker.call("create_program", {"signature": "q -> a", "module": "ChainOfThought"}, session_id=s)
    assert auto["program_id"].startswith("prog_")
    listed = worker.call("list_programs", session_id=s)
    assert {p["program_id"] for p in listed["programs"]} == {"triage", auto["program_id"]}
    assert worker.call("get_program", {"program_id": "triage"}, session_id=s)["summary"].startswith("ticket: str")
    err = error_of(worker, "create_program", {"signature": "q -> a", "program_id": "triage"}, session_id=s)
    assert (err["category"], err["code"]) == ("validation", "program_exists")
    assert worker.call("create_program", {"signature": "q -> a", "program_id": "triage", "replace": True},
                       session_id=s)["summary"] == "q: str -> a: str"
    assert worker.call("delete_program", {"program_id": "triage"}, session_id=s)["deleted"]
    assert error_of(worker, "get_program", {"program_id": "triage"}, session_id=s)["category"] == "not_found"
    # Sessions are isolated: another session, and the global scope, see none of it.
    assert worker.call("list_programs", session_id="someone-else")["count"] == 0
    assert error_of(worker, "execute_program", {"program_id": auto["program_id"], "inputs": {"q": "x"}},
                    session_id="someone-else")["code"] == "unknown_program"
    # end_session frees the session's programs at once.
    worker.call("end_session", {"session_id": s})
    assert worker.call("list_programs", session_id=s)["count"] == 0


def test_a_scope_holds_a_bounded_number_of_programs(worker):
    s = "many-programs"
    limit = worker.call("describe")["backends"]["dspy"]["limits"]["max_programs_per_scope"]
    pending = [worker.submit("create_program", {"signature": "q -> a", "program_id": f"p{i}"}, session_id=s)
               for i in range(limit + 1)]
    replies = [p.wait(60) for p in pending]
    assert all(r["success"] for r in replies[:limit])
    assert (replies[-1]["error"]["category"], replies[-1]["error"]["code"]) == ("overloaded", "too_many_programs")
    worker.call("delete_program", {"program_id": "p0"}, session_id=s)
    assert worker.call("create_program", {"signature": "q -> a", "program_id": "again"}, session_id=s)
    worker.call("end_session", {"session_id": s})


def test_a_trainset_and_its_demos_are_bounded(worker):
    """PROTOCOL.md section 10: more examples or demos than the limits is validation, before any work."""
    s = "big-trainset"
    limits = worker.call("describe")["backends"]["dspy"]["limits"]
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    worker.call("create_program", {"signature": "q -> a", "program_id": "p"}, session_id=s)
    example = {"inputs": {"q": "x"}, "outputs": {"a": "y"}}

    def optimize(n: int, **options):
        return worker.request("optimize_program", {"program_id": "p", "optimizer": "LabeledFewShot",
                                                   "trainset": [example] * n, **options}, session_id=s)

    assert optimize(limits["max_trainset"])["success"]
    err = optimize(limits["max_trainset"] + 1)["error"]
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", "invalid_args", "args.trainset")
    err = optimize(2, options={"k": limits["max_demos_per_predictor"] + 1})["error"]
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", "invalid_args", "args.options.k")
    worker.call("end_session", {"session_id": s})


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
def test_typed_outputs_are_valid_for_their_types_and_deterministic(worker, module):
    s = f"typed-{module}"
    worker.call("create_program", {"signature": TYPED, "module": module, "program_id": "t"}, session_id=s)
    first = worker.call("execute_program", {"program_id": "t", "inputs": TICKET}, session_id=s)
    outputs = first["outputs"]
    expected = set(TYPED["outputs"]) | ({"reasoning"} if module == "ChainOfThought" else set())
    assert set(outputs) == expected
    for name, field in TYPED["outputs"].items():
        canonical = fieldtypes.parse(field["type"], name, fieldtypes.Budget(100))
        fieldtypes.check(canonical, outputs[name], name)
    again = worker.call("execute_program", {"program_id": "t", "inputs": TICKET}, session_id=s)
    assert again["outputs"] == outputs
    other = worker.call("execute_program", {"program_id": "t", "inputs": {**TICKET, "ticket": "Billing"}},
                        session_id=s)
    assert other["outputs"] != outputs
    assert first["model"] == "offline" and first["usage"]["offline"]["lm_calls"] == 1
    assert first["usage"]["offline"]["total_tokens"] > 0


def test_inputs_are_validated_before_the_lm_is_called(worker):
    s = "inputs"
    worker.call("create_program", {"signature": TYPED, "program_id": "t"}, session_id=s)
    for inputs, code in [
        ({"ticket": "x"}, "missing_input"),
        ({**TICKET, "extra": 1}, "unknown_input"),
        ({**TICKET, "ticket": 42}, "wrong_type"),
        ({**TICKET, "customer": {"name": "Ada", "tier": "gold"}}, "wrong_type"),
        ({**TICKET, "customer": {"name": "Ada"}}, "missing_field"),
    ]:
        err = error_of(worker, "execute_program", {"program_id": "t", "inputs": inputs}, session_id=s)
        assert (err["category"], err["code"]) == ("validation", code), err
    assert worker.call("lm_usage", session_id=s)["models"] == {}, "a refused input must cost no LM call"


def test_usage_is_tracked_per_scope(worker):
    for s in ("usage-a", "usage-b"):
        worker.call("create_program", {"signature": "q -> a", "program_id": "p"}, session_id=s)
    for _ in range(3):
        worker.call("execute_program", {"program_id": "p", "inputs": {"q": "x"}}, session_id="usage-a")
    worker.call("execute_program", {"program_id": "p", "inputs": {"q": "x"}}, session_id="usage-b")
    a = worker.call("lm_usage", {"reset": True}, session_id="usage-a")
    assert a["scope"] == "session" and a["models"]["offline"]["lm_calls"] == 3
    assert a["lm"]["model"] == "offline"  # the session has no LM of its own: it uses the global one
    assert worker.call("lm_usage", session_id="usage-b")["models"]["offline"]["lm_calls"] == 1
    assert worker.call("lm_usage", session_id="usage-a")["models"] == {}


def test_streaming_sends_chunks_per_field_before_the_final_outputs(worker):
    s = "stream"
    worker.call("create_program", {"signature": "question -> answer", "module": "ChainOfThought",
                                   "program_id": "cot"}, session_id=s)
    events = []
    pending = worker.submit("execute_program", {"program_id": "cot", "inputs": {"question": "Why is the sky blue?"},
                                                "stream": True}, session_id=s, on_event=events.append)
    reply = pending.wait(30)
    assert reply["success"], reply
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert len(chunks) > 4
    outputs = reply["result"]["outputs"]
    for field in ("reasoning", "answer"):
        text = "".join(c["text"] for c in chunks if c["field"] == field)
        assert text == outputs[field]
    assert [c["field"] for c in chunks].index("answer") > [c["field"] for c in chunks].index("reasoning")
    assert chunks[-1]["last"] is True
    plain = worker.call("execute_program", {"program_id": "cot", "inputs": {"question": "Why is the sky blue?"}},
                        session_id=s)
    assert plain["outputs"] == outputs


def test_many_calls_in_flight_on_one_program_never_mix_inputs_or_chunks(worker):
    """40 concurrent calls in the global scope (no lane: they run in parallel), half of them streaming."""
    worker.call("create_program", {"signature": "question -> answer", "module": "ChainOfThought",
                                   "program_id": "shared", "replace": True})
    calls = []
    for i in range(40):
        events: list = []
        args = {"program_id": "shared", "inputs": {"question": f"question number {i}"}, "stream": i % 2 == 0}
        calls.append((i, events, worker.submit("execute_program", args, on_event=events.append)))
    for i, events, pending in calls:
        reply = pending.wait(60)
        assert reply["success"], reply
        answer = reply["result"]["outputs"]["answer"]
        assert answer.endswith(f": question number {i}"), answer
        if i % 2 == 0:
            streamed = "".join(e["data"]["text"] for e in events if e["data"]["field"] == "answer")
            assert streamed == answer
        else:
            assert events == []


TRAIN = [
    {"inputs": {"question": "What is the capital of France?"}, "outputs": {"answer": "Paris"}},
    {"inputs": {"question": "What is 2 + 2?"}, "outputs": {"answer": "4"}},
    {"inputs": {"question": "What colour is the sky?"}, "outputs": {"answer": "blue"}},
]


def test_labeled_few_shot_then_export_and_import_in_a_fresh_worker(worker, tmp_path):
    s = "export"
    worker.call("create_program", {"signature": "question -> answer", "module": "ChainOfThought",
                                   "program_id": "qa"}, session_id=s)
    before = worker.call("execute_program", {"program_id": "qa", "inputs": TRAIN[0]["inputs"]}, session_id=s)
    progress = []
    result = worker.call("optimize_program", {"program_id": "qa", "optimizer": "LabeledFewShot",
                                              "trainset": TRAIN, "options": {"k": 3}},
                         session_id=s, on_event=progress.append)
    assert result["demos"] == 3 and result["replaced"] and result["usage"] == {}
    assert progress and progress[-1]["data"]["done"] == 3 and progress[-1]["data"]["total"] == 3
    # The offline LM answers a demo's own inputs with the demo's outputs: the demos are in the prompt.
    taught = worker.call("execute_program", {"program_id": "qa", "inputs": TRAIN[0]["inputs"]}, session_id=s)
    assert taught["outputs"]["answer"] == "Paris" and before["outputs"]["answer"] != "Paris"
    novel = {"question": "Who wrote Hamlet?"}
    novel_out = worker.call("execute_program", {"program_id": "qa", "inputs": novel}, session_id=s)["outputs"]
    doc = worker.call("export_program", {"program_id": "qa"}, session_id=s)["program"]
    assert doc["format"] == "portbridge.dspy.program" and len(doc["state"]["predictors"]["predict"]["demos"]) == 3
    assert doc["optimizations"][0]["optimizer"] == "LabeledFewShot"

    with dspy_worker(tmp_path) as fresh:
        fresh.call("configure_lm", {"model": "offline"})
        imported = fresh.call("import_program", {"program": doc}, session_id="rebuilt")
        assert imported["program_id"] == "qa" and imported["demos"] == 3
        for inputs, expected in ((TRAIN[0]["inputs"], taught["outputs"]), (novel, novel_out)):
            again = fresh.call("execute_program", {"program_id": "qa", "inputs": inputs}, session_id="rebuilt")
            assert again["outputs"] == expected
        assert fresh.call("export_program", {"program_id": "qa"}, session_id="rebuilt")["program"]["state"] == \
            doc["state"]


def test_field_order_survives_an_export_through_a_client_that_sorts_keys(worker):
    # Elixir's maps sort their keys: an export that travels through one (a pool's records replayed on a
    # fresh Python) must rebuild the program with its fields in their order, which DSPy's prompts follow.
    import json

    s = "field-order"
    fields = [{"name": "zeta", "type": "str"}, {"name": "alpha", "type": "int"}]
    made = worker.call("create_program", {"signature": {"inputs": [{"name": "question"}], "outputs": fields},
                                          "program_id": "p"}, session_id=s)
    assert list(made["signature"]["outputs"]) == ["zeta", "alpha"]
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    assert [f["name"] for f in doc["signature"]["outputs"]] == ["zeta", "alpha"]
    sorted_doc = json.loads(json.dumps(doc, sort_keys=True))
    again = worker.call("import_program", {"program": sorted_doc, "program_id": "q"}, session_id=s)
    assert list(again["signature"]["outputs"]) == ["zeta", "alpha"]
    assert again["summary"] == made["summary"] == "question: str -> zeta: str, alpha: int"


def test_a_chain_of_thought_trainset_may_label_reasoning_and_the_metric_ignores_it(worker):
    s = "reasoning-labels"
    for module in ("ChainOfThought", "Predict"):
        worker.call("create_program", {"signature": "question -> answer", "module": module,
                                       "program_id": module}, session_id=s)
    labelled = [{"inputs": {"question": "2+2?"}, "outputs": {"reasoning": "add two and two", "answer": "4"}}]
    result = worker.call("optimize_program", {"program_id": "ChainOfThought", "optimizer": "LabeledFewShot",
                                              "trainset": labelled}, session_id=s)
    assert result["demos"] == 1
    taught = worker.call("execute_program", {"program_id": "ChainOfThought", "inputs": {"question": "2+2?"}},
                         session_id=s)["outputs"]
    assert taught == {"reasoning": "add two and two", "answer": "4"}
    err = error_of(worker, "optimize_program", {"program_id": "Predict", "optimizer": "LabeledFewShot",
                                                "trainset": labelled}, session_id=s)
    assert err["code"] == "unknown_output" and err["details"]["unknown"] == ["reasoning"]


def _tamper(doc, change):
    import copy

    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def test_import_refuses_malformed_or_mismatched_documents(worker):
    s = "import-checks"
    worker.call("create_program", {"signature": {"inputs": {"q": "str"}, "outputs": {"n": "int"}},
                                   "module": "ChainOfThought", "program_id": "p"}, session_id=s)
    worker.call("optimize_program", {"program_id": "p", "optimizer": "LabeledFewShot",
                                     "trainset": [{"inputs": {"q": "one"}, "outputs": {"n": 1}}]}, session_id=s)
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    state = lambda d: d["state"]["predictors"]["predict"]  # noqa: E731
    bad = {
        "format": lambda d: d.update(format="pickle"),
        "version": lambda d: d.update(version=2),
        "unknown key": lambda d: d.update(lm={"model": "openai/gpt-4o", "api_key": "x"}),
        "module": lambda d: d.update(module="Predict"),  # a Predict has no 'predict' predictor
        "signature": lambda d: d.update(signature="q: this -> a"),
        "demo field": lambda d: state(d)["demos"].append({"q": "x", "colour": "red"}),
        "demo type": lambda d: state(d)["demos"].append({"q": "x", "n": "seven"}),
        "demos": lambda d: state(d).update(demos="many"),
        "instructions": lambda d: state(d).update(instructions=5),
        "state": lambda d: d.update(state={"predict": {}}),
    }
    for name, change in bad.items():
        err = error_of(worker, "import_program", {"program": _tamper(doc, change), "program_id": "copy"},
                       session_id=s)
        assert err["category"] == "validation", (name, err)
    ok = worker.call("import_program", {"program": doc, "program_id": "copy"}, session_id=s)
    assert ok["demos"] == 1
    assert error_of(worker, "import_program", {"program": doc, "program_id": "copy"},
                    session_id=s)["code"] == "program_exists"


def test_bootstrap_few_shot_reports_progress_and_can_save_beside(worker):
    s = "bootstrap"
    worker.call("create_program", {"signature": "question -> answer", "program_id": "qa"}, session_id=s)
    progress = []
    result = worker.call("optimize_program", {
        "program_id": "qa", "optimizer": "BootstrapFewShot", "trainset": TRAIN, "metric": "exact_match",
        "options": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2}, "save_as": "qa-fewshot",
    }, session_id=s, on_event=progress.append)
    assert result["program_id"] == "qa-fewshot" and not result["replaced"] and result["trainset"] == 3
    assert result["usage"]["offline"]["lm_calls"] == 3  # one teacher run per example
    done = [e["data"]["done"] for e in progress]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 3 and len(done) >= 4
    assert worker.call("get_program", {"program_id": "qa"}, session_id=s)["demos"] == 0
    assert worker.call("get_program", {"program_id": "qa-fewshot"}, session_id=s)["demos"] == 2
    # The trainset is checked against the signature before any LM call.
    err = error_of(worker, "optimize_program", {"program_id": "qa", "optimizer": "BootstrapFewShot",
                                                "trainset": [{"inputs": {"q": "x"}, "outputs": {"answer": "y"}}]},
                   session_id=s)
    assert err["code"] == "unknown_input" and err["details"]["path"] == "args.trainset[0].inputs"
    err = error_of(worker, "optimize_program", {"program_id": "qa", "optimizer": "LabeledFewShot",
                                                "trainset": TRAIN, "metric_fields": ["nope"]}, session_id=s)
    assert err["code"] == "unknown_output"
