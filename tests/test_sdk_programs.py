"""``@program``: the operator's own dspy.Module classes as programs, through real workers.

The classes are in tests/support/sdk_programs.py, exposed as a user would
(``--expose tests.support.sdk_programs``). Each program command is exercised
on them (create with a checked ``init``, execute with callbacks, progress,
state, streaming, cancel; evaluate; optimise; export/import; list/get/delete),
on the offline LM; what a client may not do (build a class nobody exposed,
send an ``init`` or inputs the hints refuse) is refused before any class
runs. Parity with plain DSPy is in tests/test_dspy_parity.py.
"""

from __future__ import annotations

import os

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.sdk_programs import local_search
from tests.support.waiting import until
from tests.support.workers import ROOT, worker_env
from tests.test_sdk import run_worker, write_module

EXPOSE = ("--expose", "tests.support.sdk_programs")
NS = "sdk_programs."
QUESTION = {"question": "Who wrote DSPy?"}


def search(args: dict) -> list[str]:
    return local_search(args["query"])


CALLBACKS = {"search": search}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("sdk-programs"), *EXPOSE) as w:
        w.call("configure_lm", {"model": "offline"})
        yield w


def create(worker, session: str, module: str = "MultiHop", program_id: str = "mh", **args) -> dict:
    return worker.call("create_program", {"module": NS + module, "program_id": program_id, **args},
                       session_id=session)


def test_describe_lists_exposed_programs_with_their_docstrings_and_schemas(worker):
    info = worker.call("describe")
    programs = info["backends"]["dspy"]["exposed_programs"]
    assert sorted(programs) == [NS + n for n in ("Empty", "MultiHop", "Picky", "Slow", "Support")]
    hop = programs[NS + "MultiHop"]
    assert hop["description"] == "Answer a question after several searches, each query written from what was " \
                                 "found so far."  # the Args: section went into the schema
    assert hop["init"]["properties"]["hops"] == {"type": "integer", "minimum": 1, "maximum": 5, "default": 2,
                                                 "description": "how many searches before answering."}
    assert hop["inputs"] == {"type": "object", "properties": {"question": {"type": "string",
                                                                           "description": "what to answer."}},
                             "required": ["question"], "additionalProperties": False}  # the Context is no input
    assert hop["outputs"] is None  # forward returns a dspy.Prediction: its fields are known when it runs
    support = programs[NS + "Support"]
    assert support["class"] == "tests.support.sdk_programs.SupportReply"
    assert support["outputs"]["properties"] == {"reply": {"type": "string"}, "urgent": {"type": "boolean"}}
    assert support["init"]["properties"]["tone"] == {"enum": ["plain", "warm"], "default": "plain"}
    assert support["inputs"]["properties"]["customer"]["properties"]["tier"] == {"enum": ["free", "pro"],
                                                                                   "default": "free"}
    assert set(info["backends"]["sdk_programs"]["programs"]) == set(programs)
    assert info["commands"][NS + "searches"]["backend"] == "sdk_programs"


def test_forward_gets_the_request_context_callbacks_progress_and_state(worker):
    s = "hop"
    made = create(worker, s, init={"hops": 3})
    assert made["module"] == NS + "MultiHop" and made["init"] == {"hops": 3}
    assert made["predictors"] == ["generate_query.predict", "generate_answer.predict"] and made["demos"] == 0
    events: list = []
    asked: list = []
    result = worker.call("execute_program", {"program_id": "mh", "inputs": QUESTION}, session_id=s,
                         callbacks={"search": lambda args: asked.append(args["query"]) or search(args)},
                         on_event=events.append)
    assert len(asked) == 3 and result["outputs"]["context"] == [p for q in asked for p in local_search(q)]
    assert isinstance(result["outputs"]["answer"], str) and result["usage"]["offline"]["lm_calls"] == 4
    assert [e["data"] for e in events if e["event"] == "progress"] == \
        [{"done": i, "total": 3, "stage": "search"} for i in (1, 2, 3)]
    # The module's state in the session: the program's forward and the module's command share it.
    assert worker.call(NS + "searches", session_id=s) == {"searches": 3}
    assert worker.call(NS + "searches", session_id="another") == {}
    # A callback the client did not register fails the run in its category.
    assert error_of(worker, "execute_program", {"program_id": "mh", "inputs": QUESTION},
                    session_id=s)["category"] == "not_found"


@pytest.mark.parametrize("init,path,code", [
    ({"hops": 0}, "args.init.hops", "invalid_args"),
    ({"hops": "2"}, "args.init.hops", "invalid_args"),
    ({"hops": 2.5}, "args.init.hops", "invalid_args"),
    ({"hops": 2, "rm": "-rf"}, "args.init.rm", "invalid_args"),
    ({"hops": "__import__('os').system('true')"}, "args.init.hops", "invalid_args"),
])
def test_init_is_checked_against_the_hints_before_the_class_runs(worker, init, path, code):
    error = error_of(worker, "create_program", {"module": NS + "MultiHop", "init": init}, session_id="init")
    assert (error["category"], error["code"], error["details"]["path"]) == ("validation", code, path)
    assert worker.call("list_programs", session_id="init")["count"] == 0


def test_what_init_refuses_and_options_that_do_not_apply_are_validation_errors(worker):
    refused = error_of(worker, "create_program", {"module": NS + "Picky", "init": {"size": 4}})
    assert (refused["category"], refused["code"]) == ("validation", "invalid_value")
    assert refused["message"] == "size must be at most 3, got 4"
    wrong = error_of(worker, "create_program", {"module": NS + "MultiHop", "signature": "q -> a"})
    assert (wrong["code"], wrong["details"]["options"]) == ("option_not_applicable", ["signature"])
    assert error_of(worker, "create_program", {"signature": "q -> a", "init": {}})["code"] == "option_not_applicable"
    assert error_of(worker, "create_program", {"module": "Predict"})["code"] == "missing_signature"
    empty = error_of(worker, "create_program", {"module": NS + "Empty"})
    assert (empty["category"], empty["code"]) == ("validation", "no_predictors")


def test_inputs_are_checked_against_forwards_hints_and_arrive_as_they_promise(worker):
    s = "support"
    create(worker, s, "Support", "sr", init={"tone": "warm", "products": ["app"]})
    inputs = {"ticket": "The app crashes", "customer": {"name": "Ada", "tier": "pro"}}
    outputs = worker.call("execute_program", {"program_id": "sr", "inputs": inputs}, session_id=s)["outputs"]
    assert set(outputs) == {"reply", "urgent"} and isinstance(outputs["urgent"], bool)
    for bad, path in [({"ticket": "x"}, "args.inputs.customer"),
                      ({**inputs, "customer": {"name": "Ada", "tier": "gold"}}, "args.inputs.customer.tier"),
                      ({**inputs, "extra": 1}, "args.inputs.extra"),
                      ({**inputs, "ticket": 3}, "args.inputs.ticket")]:
        error = error_of(worker, "execute_program", {"program_id": "sr", "inputs": bad}, session_id=s)
        assert (error["category"], error["details"]["path"]) == ("validation", path)


@pytest.mark.parametrize("module", [
    "sdk_programs.NotExposed", "sdk_programs.Context", "sdk_programs.dspy", "sdk_programs.searches",
    "os.system", "builtins.eval", "sdk_programs.__init__",
])
def test_classes_nobody_exposed_are_not_found(worker, module):
    error = error_of(worker, "create_program", {"module": module})
    assert (error["category"], error["code"]) == ("not_found", "unknown_module")
    doc = {"format": "portbridge.dspy.program", "version": 1, "module": module, "options": {}, "state": {}}
    assert error_of(worker, "import_program", {"program": doc})["code"] == "unknown_module"


def test_a_module_nobody_exposed_is_never_imported(tmp_path, spawn):
    marker = tmp_path / "imported"
    write_module(tmp_path, "sneaky_progs", f"""
        open({str(marker)!r}, "w").write("imported")
        import dspy
        from bridge.sdk import program

        @program
        class Sneaky(dspy.Module):
            def forward(self, question: str): ...
    """)
    w = spawn(*EXPOSE, env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))  # importable, not exposed
    for module in ("sneaky_progs.Sneaky", "tests.support.sneaky"):
        reply = w.request("create_program", {"module": module})
        assert reply["error"]["category"] in ("not_found", "validation"), reply
    doc = {"format": "portbridge.dspy.program", "version": 1, "module": "sneaky_progs.Sneaky",
           "options": {"adapter": "chat", "init": {}}, "state": {"predictors": {}}}
    assert w.request("import_program", {"program": doc})["error"]["code"] == "unknown_module"
    assert w.call(NS + "searches") == {} and not marker.exists()


def test_installed_program_modules_are_exposed_through_the_entry_point_group(tmp_path, spawn):
    write_module(tmp_path, "qa_dist.progs", """
        import dspy
        from bridge.sdk import program

        @program
        class Answer(dspy.Module):
            \"\"\"Answer a question.\"\"\"
            def __init__(self):
                super().__init__()
                self.answer = dspy.Predict("question -> answer")

            def forward(self, question: str):
                return self.answer(question=question)
    """)
    info = tmp_path / "qa_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qa-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[portbridge.commands]\nqa = qa_dist.progs\n")
    w = spawn(env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))  # every installed backend and module
    w.call("configure_lm", {"model": "offline"})
    assert w.call("create_program", {"module": "qa.Answer", "program_id": "a"})["description"] == "Answer a question."
    assert "answer" in w.call("execute_program", {"program_id": "a", "inputs": QUESTION})["outputs"]


def test_what_forward_raises_or_returns_is_categorised_and_the_worker_keeps_serving(worker):
    s = "picky"
    create(worker, s, "Picky", "p")
    failed = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "boom"}}, session_id=s)
    assert (failed["category"], failed["message"]) == ("execution", "RuntimeError: the program failed")
    odd = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "nothing"}}, session_id=s)
    assert (odd["category"], odd["code"]) == ("execution", "bad_forward_result")
    assert "answer" in worker.call("execute_program", {"program_id": "p", "inputs": {"question": "ok?"}},
                                   session_id=s)["outputs"]


def test_streaming_chunks_name_the_modules_own_predictors(worker):
    s = "stream"
    create(worker, s, init={"hops": 1})
    events: list = []
    result = worker.call("execute_program", {"program_id": "mh", "inputs": QUESTION, "stream": True},
                         session_id=s, callbacks=CALLBACKS, on_event=events.append)
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert {c["predictor"] for c in chunks} == {"generate_query.predict", "generate_answer.predict"}
    answer = "".join(c["text"] for c in chunks if c["predictor"] == "generate_answer.predict" and
                     c["field"] == "answer")
    assert answer == result["outputs"]["answer"]


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_cancel_and_the_deadline_reach_forward(worker, how):
    s = f"slow-{how}"
    create(worker, s, "Slow", "slow")
    pending = worker.submit("execute_program", {"program_id": "slow", "inputs": {"question": "?", "seconds": 30}},
                            session_id=s, timeout_ms=300 if how == "deadline" else None)
    if how == "cancel":
        until(lambda: worker.call("stats"), lambda stats: stats["running"] >= 1)
        worker.call("cancel", {"request_id": pending.id})
    assert pending.wait(10)["error"]["category"] == ("cancelled" if how == "cancel" else "timeout")
    until(lambda: worker.call("stats"), lambda stats: stats["running"] == 0)  # the wait stopped at once


def test_evaluate_runs_forward_in_dspys_threads_with_the_request_context(worker):
    s = "evaluate"
    create(worker, s, init={"hops": 1})
    devset = [{"inputs": {"question": f"Question {i}?"}, "outputs": {"answer": "no"}} for i in range(4)]
    result = worker.call("evaluate_program", {"program_id": "mh", "devset": devset, "num_threads": 2},
                         session_id=s, callbacks=CALLBACKS)
    assert result["count"] == 4 and result["errors"] == 0, result
    assert all(set(r["outputs"]) == {"context", "answer"} for r in result["results"])
    assert worker.call(NS + "searches", session_id=s) == {"searches": 4}


def test_optimise_tunes_every_predictor_and_the_export_imports_anywhere(worker):
    s, other = "optimise", "optimise-copy"
    create(worker, s, init={"hops": 2})
    trainset = [{"inputs": {"question": f"Question {i}?"}, "outputs": {"answer": "anything"}} for i in range(3)]
    result = worker.call("optimize_program", {
        "program_id": "mh", "optimizer": "BootstrapFewShot", "trainset": trainset, "metric": {"callback": "metric"},
        "options": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}},
        session_id=s, callbacks={**CALLBACKS, "metric": lambda args: 1.0})
    assert set(result["instructions"]) == {"generate_query.predict", "generate_answer.predict"}
    doc = worker.call("export_program", {"program_id": "mh"}, session_id=s)["program"]
    assert doc["module"] == NS + "MultiHop" and doc["options"] == {"adapter": "chat", "init": {"hops": 2}}
    learned = doc["state"]["predictors"]
    assert all(len(learned[name]["demos"]) == 2 for name in ("generate_query.predict", "generate_answer.predict"))
    assert set(learned["generate_query.predict"]["demos"][0]) >= {"question", "context", "search_query"}
    assert doc["optimizations"][0]["optimizer"] == "BootstrapFewShot"

    imported = worker.call("import_program", {"program": doc}, session_id=other)
    assert imported["program_id"] == "mh" and imported["demos"] == 4
    assert worker.call("export_program", {"program_id": "mh"}, session_id=other)["program"]["state"] == doc["state"]
    run = {"program_id": "mh", "inputs": QUESTION}
    assert worker.call("execute_program", run, session_id=other, callbacks=CALLBACKS)["outputs"] == \
        worker.call("execute_program", run, session_id=s, callbacks=CALLBACKS)["outputs"]
    listed = worker.call("list_programs", session_id=other)["programs"]
    assert [(p["program_id"], p["module"]) for p in listed] == [("mh", NS + "MultiHop")]
    assert worker.call("get_program", {"program_id": "mh"}, session_id=other)["demos"] == 4
    assert worker.call("delete_program", {"program_id": "mh"}, session_id=other)["deleted"] is True
    assert error_of(worker, "get_program", {"program_id": "mh"}, session_id=other)["category"] == "not_found"


def test_labelled_demos_on_every_predictor_export_and_import(worker):
    # LabeledFewShot gives each predictor the whole example: fields a predictor lacks ride along.
    s = "labelled"
    create(worker, s, init={"hops": 1})
    trainset = [{"inputs": {"question": f"Q{i}?"}, "outputs": {"answer": f"A{i}"}} for i in range(2)]
    assert worker.call("optimize_program", {"program_id": "mh", "optimizer": "LabeledFewShot", "trainset": trainset},
                       session_id=s)["demos"] == 4
    doc = worker.call("export_program", {"program_id": "mh"}, session_id=s)["program"]
    assert {"question": "Q0?", "answer": "A0"} in doc["state"]["predictors"]["generate_query.predict"]["demos"]
    assert worker.call("import_program", {"program": doc, "program_id": "copy"}, session_id=s)["demos"] == 4
    bad = [{"inputs": {"question": "Q?"}, "outputs": {"not a name": "A"}}]
    error = error_of(worker, "optimize_program", {"program_id": "mh", "optimizer": "LabeledFewShot",
                                                  "trainset": bad}, session_id=s)
    assert (error["category"], error["details"]["path"]) == ("validation", "args.trainset[0].outputs")


def test_documents_that_do_not_fit_the_class_are_refused(worker):
    s = "documents"
    create(worker, s, init={"hops": 1})
    doc = worker.call("export_program", {"program_id": "mh"}, session_id=s)["program"]
    predictors = doc["state"]["predictors"]
    cases = [
        ({**doc, "options": {"adapter": "chat", "init": {"hops": 9}}}, "args.program.options.init.hops"),
        ({**doc, "options": {"init": {}, "code": "x"}}, "args.program.options"),
        ({**doc, "state": {"predictors": {"other.predict": predictors["generate_query.predict"]}}},
         "args.program.state.predictors"),
        ({**doc, "state": {"predictors": {**predictors, "generate_query.predict": {
            "instructions": "x", "demos": [{"question": "q", "not a field": "p"}]}}}},
         "args.program.state.predictors.generate_query.predict.demos[0]"),
        ({**doc, "state": {"predictors": {**predictors, "generate_query.predict": {
            "instructions": "x", "demos": [{"question": "q", "augmented": "yes"}]}}}},
         "args.program.state.predictors.generate_query.predict.demos[0].augmented"),
        ({**doc, "state": {"predictors": {**predictors, "generate_query.predict": {
            "instructions": 3, "demos": []}}}},
         "args.program.state.predictors.generate_query.predict.instructions"),
        ({**doc, "signature": "question -> answer"}, "args.program"),
    ]
    for bad, path in cases:
        error = error_of(worker, "import_program", {"program": bad, "program_id": "bad"}, session_id=s)
        assert (error["category"], error["details"]["path"]) == ("validation", path), error
    assert worker.call("list_programs", session_id=s)["count"] == 1


@pytest.mark.parametrize("source,message", [
    ("class P:\n    def forward(self, question: str): ...",
     "@program: P must subclass dspy.Module"),
    ("class P(dspy.Module):\n    def __init__(self, when: set): ...\n    def forward(self, question: str): ...",
     "bad_programs.P.__init__(when): set has no JSON form"),
    ("class P(dspy.Module):\n    def forward(self, question: dict[int, str]): ...",
     "bad_programs.P.forward(question): dict: JSON maps have string keys"),
    ("class P(dspy.Module):\n    def __init__(self, ctx: Context): ...\n    def forward(self, question: str): ...",
     "bad_programs.P.__init__: parameter 'ctx' takes the Context"),
    ("class P(dspy.Module):\n    pass", "@program: P has no forward method"),
])
def test_a_class_that_cannot_be_a_program_stops_the_worker_at_start_up_naming_it(tmp_path, source, message):
    write_module(tmp_path, "bad_programs", "import dspy\nfrom bridge.sdk import Context, program\n\n@program\n"
                 + source + "\n")
    code, stderr = run_worker(tmp_path, "--expose", "bad_programs")
    assert code == 2 and message in stderr, stderr
