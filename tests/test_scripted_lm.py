"""The ``scripted`` model: each LM call answered with the next scripted map, for any adapter and output type.

What a test of an application would do, through a real worker: configure the
scope's LM as ``scripted`` with the outputs it wants, run real programs
(Predict, ChainOfThought, typed outputs, each adapter, streaming), and get
those outputs back, in order, with a clear error once they run out.
"""

from __future__ import annotations

import pytest

from tests.support.dspy_workers import error_of, module_worker

TYPED = {"name": "Triage", "instructions": "Triage the ticket.",
         "inputs": {"ticket": {"type": "str"}},
         "outputs": {"category": {"type": {"literal": ["billing", "bug", "other"]}},
                     "urgent": {"type": "bool"}, "minutes": {"type": "int"}, "score": {"type": "float"},
                     "tags": {"type": "list[str]"}, "counts": {"type": "dict[str, int]"},
                     "owner": {"type": {"object": {"team": "str", "backup": "optional[str]"}, "name": "Owner"}}}}
TYPED_ANSWERS = [
    {"category": "bug", "urgent": True, "minutes": 15, "score": 0.75, "tags": ["crash", "ios"],
     "counts": {"reports": 3}, "owner": {"team": "core", "backup": None}},
    {"category": "billing", "urgent": False, "minutes": 0, "score": 1.0, "tags": [], "counts": {},
     "owner": {"team": "money", "backup": "ops"}},
]


worker = module_worker("scripted")


def script(worker, session: str | None, answers: list[dict]) -> dict:
    return worker.call("configure_lm", {"model": "scripted", "answers": answers}, session_id=session)


def create(worker, session: str | None, program_id: str, signature, **options) -> None:
    worker.call("create_program", {"signature": signature, "program_id": program_id, "replace": True, **options},
                session_id=session)


def run(worker, session: str | None, program_id: str, inputs: dict, **args) -> dict:
    return worker.call("execute_program", {"program_id": program_id, "inputs": inputs, **args},
                       session_id=session)["outputs"]


@pytest.mark.parametrize("adapter", ["chat", "json", "xml"])
def test_predict_gets_each_answer_in_order_with_any_adapter(worker, adapter):
    session = f"scripted-predict-{adapter}"
    assert script(worker, session, [{"answer": "Paris"}, {"answer": "Rome"}]) == \
        {"model": "scripted", "answers": 2, "cache": False, "num_retries": 0, "api_key_set": False,
         "scope": "session"}
    create(worker, session, "qa", "question -> answer", adapter=adapter)
    assert run(worker, session, "qa", {"question": "Capital of France?"}) == {"answer": "Paris"}
    assert run(worker, session, "qa", {"question": "Capital of France?"}) == {"answer": "Rome"}  # never cached


@pytest.mark.parametrize("adapter", ["chat", "json", "xml"])
def test_typed_outputs_come_back_as_scripted_with_any_adapter(worker, adapter):
    session = f"scripted-typed-{adapter}"
    script(worker, session, TYPED_ANSWERS)
    create(worker, session, "triage", TYPED, adapter=adapter)
    for answer in TYPED_ANSWERS:
        assert run(worker, session, "triage", {"ticket": "The app crashes"}) == answer


@pytest.mark.parametrize("adapter", ["chat", "json", "xml"])
def test_chain_of_thought_takes_its_reasoning_from_the_script(worker, adapter):
    session = f"scripted-cot-{adapter}"
    script(worker, session, [{"reasoning": "Count the legs.", "legs": 8}])
    create(worker, session, "spider", {"inputs": {"animal": "str"}, "outputs": {"legs": "int"}},
           module="ChainOfThought", adapter=adapter)
    assert run(worker, session, "spider", {"animal": "spider"}) == {"reasoning": "Count the legs.", "legs": 8}


def test_streaming_sends_the_scripted_answer_as_chunks(worker):
    session = "scripted-stream"
    script(worker, session, [{"answer": "A streamed, scripted answer."}])
    create(worker, session, "qa", "question -> answer")
    pending = worker.submit("execute_program", {"program_id": "qa", "inputs": {"question": "q"}, "stream": True},
                            session_id=session)
    reply = pending.wait(30)
    assert reply["success"] and reply["result"]["outputs"] == {"answer": "A streamed, scripted answer."}
    chunks = [e["data"] for e in pending.events if e["event"] == "chunk"]
    assert "".join(c["text"] for c in chunks) == "A streamed, scripted answer." and chunks[-1]["last"]


def test_running_out_of_answers_is_a_clear_execution_error_and_configure_starts_again(worker):
    session = "scripted-exhausted"
    script(worker, session, [{"answer": "only one"}])
    create(worker, session, "qa", "question -> answer")
    assert run(worker, session, "qa", {"question": "q"}) == {"answer": "only one"}
    error = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}},
                     session_id=session)
    assert (error["category"], error["code"], error["details"]) == \
        ("execution", "scripted_answers_exhausted", {"answers": 1})
    assert "configure_lm" in error["message"] and "all 1" in error["message"]
    script(worker, session, [{"answer": "again"}])
    assert run(worker, session, "qa", {"question": "q"}) == {"answer": "again"}


def test_an_answer_missing_a_field_fails_parsing_as_a_real_models_would(worker):
    """ChatAdapter cannot parse it, DSPy retries through JSONAdapter, which takes the next answer."""
    session = "scripted-missing"
    script(worker, session, [{"wrong": "x"}, {"answer": "from the JSON retry"}])
    create(worker, session, "qa", "question -> answer")
    assert run(worker, session, "qa", {"question": "q"}) == {"answer": "from the JSON retry"}
    script(worker, session, [{"wrong": "x"}, {"wrong": "y"}])
    error = error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}},
                     session_id=session)
    assert error["category"] == "output_parse"


def test_scripts_belong_to_their_scope(worker):
    """A session's script is its own; sessions without an LM of their own share the global one's."""
    script(worker, None, [{"answer": f"global {i}"} for i in range(3)])
    script(worker, "scripted-own", [{"answer": "own"}])
    for session in (None, "scripted-own", "scripted-borrow-1", "scripted-borrow-2"):
        create(worker, session, "qa", "question -> answer")
    assert run(worker, "scripted-own", "qa", {"question": "q"}) == {"answer": "own"}
    assert run(worker, "scripted-borrow-1", "qa", {"question": "q"}) == {"answer": "global 0"}
    assert run(worker, None, "qa", {"question": "q"}) == {"answer": "global 1"}
    assert run(worker, "scripted-borrow-2", "qa", {"question": "q"}) == {"answer": "global 2"}
    assert error_of(worker, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}},
                    session_id="scripted-own")["code"] == "scripted_answers_exhausted"


def test_concurrent_calls_take_each_answer_exactly_once(worker):
    answers = [{"answer": f"answer {i}"} for i in range(40)]
    script(worker, None, answers)
    create(worker, None, "qa-concurrent", "question -> answer")
    pending = [worker.submit("execute_program", {"program_id": "qa-concurrent", "inputs": {"question": f"q{i}"}})
               for i in range(40)]
    outputs = [p.wait(30)["result"]["outputs"] for p in pending]
    assert sorted(o["answer"] for o in outputs) == sorted(a["answer"] for a in answers)


def test_the_script_is_bounded_checked_and_described(worker):
    assert script(worker, "scripted-bound", [{}] * 1000)["answers"] == 1000
    for args, path, reason in (({"model": "scripted", "answers": [{}] * 1001}, "args.answers", "maxItems"),
                               ({"model": "scripted", "answers": []}, "args.answers", "minItems"),
                               ({"model": "scripted", "answers": [1]}, "args.answers[0]", "type"),
                               ({"model": "scripted"}, "args.answers", "required"),
                               ({"model": "offline", "answers": [{}]}, "args.answers", "scripted_only")):
        error = error_of(worker, "configure_lm", args, session_id="scripted-bound")
        assert (error["category"], error["details"]["path"], error["details"]["reason"]) == \
            ("validation", path, reason), args
    error = error_of(worker, "configure_lm", {"model": "scripted", "answers": [{}], "api_base": "http://x.y/v1"})
    assert error["code"] == "offline_takes_no_endpoint"
    dspy_backend = worker.call("describe")["backends"]["dspy"]
    assert dspy_backend["limits"]["max_scripted_answers"] == 1000
    assert "scripted" in dspy_backend["lm"]["models"] and "scripted_answers_exhausted" in dspy_backend["lm"]["scripted"]
    answers_schema = worker.call("describe")["commands"]["configure_lm"]["args"]["properties"]["answers"]
    assert answers_schema["maxItems"] == 1000
