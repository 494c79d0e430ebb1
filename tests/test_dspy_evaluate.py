"""evaluate_program and the optimisers beyond few-shot, through a real worker (issue 12).

The offline LM keeps these fast and deterministic; the loopback server gives
the slow model that cancel and deadline tests need.
"""

from __future__ import annotations

import threading

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import OpenAIServer
from tests.support.waiting import until

TRAIN = [{"inputs": {"question": f"What is {i} + {i}?"}, "outputs": {"answer": str(2 * i)}} for i in range(6)]
JUDGE = {"judge": {
    "signature": {"inputs": {"question": "str", "gold": "str", "answer": "str"}, "outputs": {"correct": "bool"}},
    "instructions": "Is the answer the gold answer?",
    "inputs": {"question": "example.question", "gold": "example.answer", "answer": "prediction.answer"},
    "score": "correct"}}
OPTIMIZERS = {
    "BootstrapFewShotWithRandomSearch": {"num_candidate_programs": 2, "max_bootstrapped_demos": 2},
    "MIPROv2": {"auto": "light", "num_threads": 2, "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "COPRO": {"breadth": 2, "depth": 1},
    "SIMBA": {"bsize": 4, "max_steps": 1, "num_candidates": 2, "max_demos": 1},
    "GEPA": {"max_metric_calls": 20, "reflection_minibatch_size": 2, "reflection_lm": {"model": "offline"}},
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-evaluate")) as w:
        w.call("configure_lm", {"model": "offline"})
        yield w


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as s:
        yield s


def create(worker, session: str, module: str = "Predict", program_id: str = "qa") -> None:
    worker.call("create_program", {"signature": "question -> answer", "module": module, "program_id": program_id},
                session_id=session)


def test_evaluate_scores_each_example_and_reports_progress(worker):
    s = "evaluate"
    create(worker, s)
    # Teach two answers: the offline LM repeats a demo's outputs for the demo's own inputs.
    worker.call("optimize_program", {"program_id": "qa", "optimizer": "LabeledFewShot", "trainset": TRAIN[:2]},
                session_id=s)
    events = []
    result = worker.call("evaluate_program", {"program_id": "qa", "devset": TRAIN, "num_threads": 3},
                         session_id=s, on_event=events.append)
    assert result["count"] == 6 and result["errors"] == 0 and result["metric"] == "exact_match"
    assert [r["score"] for r in result["results"]] == [1.0, 1.0, 0, 0, 0, 0]
    assert result["score"] == pytest.approx(100 * 2 / 6, abs=0.01)  # dspy.Evaluate's percentage
    assert result["results"][0]["outputs"] == {"answer": "0"}
    assert result["usage"]["offline"]["lm_calls"] == 6  # every thread's calls are counted
    done = [e["data"]["done"] for e in events if e["event"] == "progress"]
    assert done[0] == 0 and done[-1] == 6 and sorted(done) == done and len(done) == 7
    bare = worker.call("evaluate_program", {"program_id": "qa", "devset": TRAIN[:1], "return_outputs": False,
                                            "metric": "f1"}, session_id=s)
    assert "outputs" not in bare["results"][0] and bare["metric"] == "f1"


def test_an_lm_judge_declared_as_data_grades_with_the_scopes_lm(worker):
    s = "judge"
    create(worker, s)
    result = worker.call("evaluate_program", {"program_id": "qa", "devset": TRAIN, "metric": JUDGE}, session_id=s)
    assert result["metric"] == "judge" and all(r["score"] in (0.0, 1.0) for r in result["results"])
    assert result["usage"]["offline"]["lm_calls"] == 12  # the program's call and the judge's, per example
    again = worker.call("evaluate_program", {"program_id": "qa", "devset": TRAIN, "metric": JUDGE}, session_id=s)
    assert again["results"] == result["results"]  # deterministic
    bad = {"judge": {**JUDGE["judge"], "inputs": {**JUDGE["judge"]["inputs"], "answer": "prediction.nope"}}}
    err = error_of(worker, "evaluate_program", {"program_id": "qa", "devset": TRAIN, "metric": bad}, session_id=s)
    assert (err["category"], err["code"], err["details"]["path"]) == \
        ("validation", "bad_judge", "args.metric.judge.inputs.answer")
    err = error_of(worker, "evaluate_program", {"program_id": "qa", "devset": TRAIN,
                                                "metric": {"judge": {**JUDGE["judge"], "score": "gold"}}},
                   session_id=s)
    assert err["code"] == "bad_judge"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimiser_runs_reports_and_exports(worker, tmp_path, name):
    s = f"opt-{name}"
    create(worker, s, "ChainOfThought")
    events = []
    result = worker.call("optimize_program", {"program_id": "qa", "optimizer": name, "trainset": TRAIN,
                                              "options": OPTIMIZERS[name], "save_as": "tuned"},
                         session_id=s, on_event=events.append, timeout_ms=120_000)
    assert result["program_id"] == "tuned" and result["optimizer"] == name
    assert result["usage"]["offline"]["lm_calls"] > len(TRAIN)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 2 and all(p["optimizer"] == name for p in progress)
    doc = worker.call("export_program", {"program_id": "tuned"}, session_id=s)["program"]
    assert doc["optimizations"][-1]["optimizer"] == name
    assert doc["state"]["predictors"]["predict"]["instructions"] == result["instructions"]["predict"]
    imported = worker.call("import_program", {"program": doc, "program_id": "copy"}, session_id=s)
    assert imported["demos"] == result["demos"]
    question = {"question": "What is 9 + 9?"}
    assert worker.call("execute_program", {"program_id": "copy", "inputs": question}, session_id=s)["outputs"] == \
        worker.call("execute_program", {"program_id": "tuned", "inputs": question}, session_id=s)["outputs"]


def test_copro_writes_new_instructions(worker):
    s = "copro-instructions"
    create(worker, s)
    before = worker.call("export_program", {"program_id": "qa"}, session_id=s)["program"]
    result = worker.call("optimize_program", {"program_id": "qa", "optimizer": "COPRO", "trainset": TRAIN,
                                              "options": {"breadth": 2, "depth": 1}}, session_id=s)
    assert result["instructions"]["self"] != before["state"]["predictors"]["self"]["instructions"]


@pytest.mark.parametrize("options, path", [
    ({"k": 2}, "args.options"),  # LabeledFewShot's option, not MIPROv2's
    ({"auto": None}, "args.options"),  # explicit settings need num_candidates and num_trials
])
def test_options_are_checked_per_optimiser(worker, options, path):
    s = f"bad-options-{len(options)}-{next(iter(options))}"
    create(worker, s, program_id="p")
    err = error_of(worker, "optimize_program", {"program_id": "p", "optimizer": "MIPROv2", "trainset": TRAIN,
                                                "options": options}, session_id=s)
    assert err["category"] == "validation" and err["details"]["path"] == path


@pytest.mark.parametrize("optimizer, options, extra, option, sizes", [
    # DSPy 3.4.1 fails these mid-run ("Minibatch size cannot exceed the size of the valset", an assertion)
    ("MIPROv2", {"auto": None, "num_trials": 2, "num_candidates": 2}, {}, "minibatch_size", ["35", "4", "6"]),
    ("MIPROv2", {"auto": None, "num_trials": 2, "num_candidates": 2, "minibatch_size": 6},
     {"valset": TRAIN[:5]}, "minibatch_size", ["6", "5"]),
    ("MIPROv2", {"auto": "light", "num_trials": 3}, {}, "num_trials", []),
    ("MIPROv2", {}, {"trainset": TRAIN[:1]}, "trainset", ["1"]),
    ("SIMBA", {"max_steps": 1}, {}, "bsize", ["32", "6"]),
    ("SIMBA", {"bsize": 7}, {}, "bsize", ["7", "6"]),
])
def test_options_that_cannot_work_with_the_set_sizes_are_refused_before_any_lm_call(worker, optimizer, options,
                                                                                    extra, option, sizes):
    s = f"infeasible-{optimizer}-{option}-{options.get('bsize', 0)}-{len(options)}-{len(extra)}"
    create(worker, s, program_id="p")
    err = error_of(worker, "optimize_program", {"program_id": "p", "optimizer": optimizer, "trainset": TRAIN,
                                                "options": options, **extra}, session_id=s)
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", "bad_options", "args.options")
    assert err["details"].get("option") == option and all(size in err["message"] for size in sizes), err
    assert worker.call("lm_usage", session_id=s)["models"] == {}  # no LM call was made


def test_mipro_with_explicit_settings(worker):
    s = "mipro-explicit"
    create(worker, s)
    result = worker.call("optimize_program", {"program_id": "qa", "optimizer": "MIPROv2", "trainset": TRAIN,
                                              "options": {"auto": None, "num_candidates": 2, "num_trials": 2,
                                                          "max_bootstrapped_demos": 1, "max_labeled_demos": 1,
                                                          "minibatch": False}}, session_id=s)
    assert result["usage"]["offline"]["lm_calls"] > 0


@pytest.mark.parametrize("name", ["MIPROv2", "GEPA"])
def test_a_long_optimisation_honours_the_deadline_and_cancel(worker, server, name):
    """Every LM call takes 50 ms: the run would take minutes; it stops at the deadline, then on cancel."""
    s = f"stop-{name}"
    worker.call("configure_lm", {"model": "openai/slow-50", "api_base": server.base_url, "api_key": "k",
                                 "num_retries": 0}, session_id=s)
    create(worker, s)
    args = {"program_id": "qa", "optimizer": name, "trainset": TRAIN * 5,
            "options": {"auto": "heavy"} if name == "MIPROv2" else {"max_metric_calls": 5000}}
    err = error_of(worker, "optimize_program", args, session_id=s, timeout_ms=700)
    assert err["category"] == "timeout"
    until(lambda: worker.call("stats"), lambda stats: stats["running"] == 0, timeout=30)
    calls = worker.call("lm_usage", {"reset": True}, session_id=s)["models"]["openai/slow-50"]["lm_calls"]
    assert calls < 60  # about 700 ms of 50 ms calls on a few threads, not the whole run

    running = threading.Event()
    pending = worker.submit("optimize_program", args, session_id=s,
                            on_event=lambda e: e["data"].get("lm_calls", 0) > 0 and running.set())
    assert running.wait(60), "no progress event with LM calls"
    assert worker.call("cancel", {"request_id": pending.id})["cancelled"]
    assert pending.wait(10)["error"]["category"] == "cancelled"
    until(lambda: worker.call("stats"), lambda stats: stats["running"] == 0, timeout=30)
    assert worker.call("get_program", {"program_id": "qa"}, session_id=s)["optimizations"] == []
