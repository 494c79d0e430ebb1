"""Scripted answers (DSPy's DummyLM) in a real worker: exact outputs, parse failures, bootstrapping.

``tests/support/scripted_lm.py`` is loaded with ``--backend-module`` and only
swaps a session's LM for a DummyLM; validation, execution, the adapters, the
optimisers and the error mapping are the real ones.
"""

from __future__ import annotations

import pytest

from tests.support.dspy_workers import SCRIPTED_BACKEND, dspy_worker, error_of

TYPED = {"inputs": {"q": "str"},
         "outputs": {"n": "int", "tags": "list[str]", "level": {"type": {"literal": ["low", "high"]}},
                     "item": {"type": {"object": {"sku": "str", "qty": "optional[int]"}, "name": "Item"}}}}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-scripted"), "--backend-module", SCRIPTED_BACKEND) as w:
        yield w


def test_scripted_typed_answers_come_back_as_json_values(worker):
    s = "typed"
    answer = {"n": 7, "tags": ["a", "b"], "level": "high", "item": {"sku": "X-1", "qty": None}}
    worker.call("script_lm", {"answers": [answer]}, session_id=s)
    worker.call("create_program", {"signature": TYPED, "program_id": "p"}, session_id=s)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"q": "go"}}, session_id=s)
    assert result["outputs"] == answer and result["model"] == "dummy"


@pytest.mark.parametrize("answers", [
    [{"unrelated": "x"}, {"unrelated": "y"}],        # ChatAdapter fails, then its JSONAdapter retry fails
    [{"n": "seven", "tags": [], "level": "low", "item": {"sku": "a"}}] * 2,
    [{"n": 1, "tags": [], "level": "medium", "item": {"sku": "a"}}] * 2,
])
def test_answers_that_do_not_fit_the_signature_are_output_parse_errors(worker, answers):
    s = f"parse-{len(str(answers))}"
    worker.call("script_lm", {"answers": answers}, session_id=s)
    worker.call("create_program", {"signature": TYPED, "program_id": "p"}, session_id=s)
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"q": "go"}}, session_id=s)
    assert (err["category"], err["code"]) == ("output_parse", "output_parse"), err
    assert err["retryable"] is True and err["recovery"] == "immediate_retry"


def test_bootstrap_keeps_exactly_the_runs_the_metric_accepts(worker):
    s = "bootstrap"
    trainset = [{"inputs": {"question": f"What is {i} + {i}?"}, "outputs": {"answer": str(2 * i)}}
                for i in range(1, 6)]
    # Right for 1..3, wrong for 4 and 5 (the metric must reject those runs).
    script = {f"What is {i} + {i}?": {"reasoning": "add", "answer": str(2 * i if i <= 3 else 0)}
              for i in range(1, 6)}
    worker.call("script_lm", {"answers": script}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer", "module": "ChainOfThought",
                                   "program_id": "math"}, session_id=s)
    result = worker.call("optimize_program", {"program_id": "math", "optimizer": "BootstrapFewShot",
                                              "trainset": trainset, "metric": "exact_match",
                                              "options": {"max_bootstrapped_demos": 5, "max_labeled_demos": 5}},
                         session_id=s)
    assert result["bootstrapped"] == 3 and result["demos"] == 5
    demos = worker.call("export_program", {"program_id": "math"}, session_id=s)["program"]["state"]
    demos = demos["predictors"]["predict"]["demos"]
    augmented = [d for d in demos if d.get("augmented")]
    assert sorted(d["answer"] for d in augmented) == ["2", "4", "6"]
    assert all(d["reasoning"] == "add" for d in augmented)
    assert sorted(d["answer"] for d in demos if not d.get("augmented")) == ["10", "8"]
