"""Where the worker used to differ from plain DSPy 3.4 (issue 12's six defects), each pinned by a test.

Every test runs a real worker against the loopback OpenAI-compatible server
and looks at what the server received or what came back. The rule they keep:
a program run through portbridge sends the LM what the same program sends in
plain DSPy, and returns what it returns; where we differ on purpose,
``describe`` says so (``backends.dspy.differences``).
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.backends.dspy import metrics
from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import OpenAIServer

OWNER = {"inputs": {"ticket": "str"},
         "outputs": {"owner": {"type": {"object": {"team": "str", "backup": "optional[str]"}, "name": "Owner"}}}}


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as s:
        yield s


@pytest.fixture(scope="module")
def char_server():
    """One character per SSE event, as PyPI's mockllm streams."""
    with OpenAIServer(chunk_chars=1) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-fidelity")) as w:
        yield w


def configure(worker, base_url: str, session: str, model: str) -> None:
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": base_url, "api_key": "k",
                                 "num_retries": 0}, session_id=session)


def test_an_object_field_from_a_dict_spec_has_the_schema_plain_dspy_sends(worker, server):
    """Defect 1: no ``additionalProperties: false`` in the prompt's JSON schema."""
    s = "object-schema"
    configure(worker, server.base_url, s, "objects-1")
    worker.call("create_program", {"signature": OWNER, "program_id": "p"}, session_id=s)
    server.script("objects-1", '[[ ## owner ## ]]\n{"team": "core", "backup": null}\n\n[[ ## completed ## ]]')
    before = len(server.seen)
    worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "x"}}, session_id=s)
    system = server.seen[before].messages[0]["content"]
    assert '"title": "Owner"' in system and "additionalProperties" not in system


def test_an_object_answer_with_an_extra_key_is_accepted_in_one_call(worker, server):
    """Defect 2: the extra key is ignored (as plain DSPy does), with no second LM call."""
    s = "object-extra"
    configure(worker, server.base_url, s, "objects-2")
    worker.call("create_program", {"signature": OWNER, "program_id": "p"}, session_id=s)
    server.script("objects-2", '[[ ## owner ## ]]\n{"team": "core", "backup": null, "mood": "calm"}\n\n'
                               "[[ ## completed ## ]]")
    before = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "x"}}, session_id=s)
    assert result["outputs"] == {"owner": {"team": "core", "backup": None}}
    assert len(server.seen) - before == 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_exact_match_normalises_as_dspy_answer_exact_match(a, b):
    """Defect 3: NFD first, then SQuAD normalisation; the same verdicts as DSPy's own normalize_text."""
    from dspy.evaluate.metrics import normalize_text

    assert metrics.normalize(a) == normalize_text(a)
    assert metrics.METRICS["exact_match"][0](a, b) == float(normalize_text(a) == normalize_text(b))


def test_exact_match_agrees_on_composed_and_decomposed_accents():
    assert unicodedata.normalize("NFC", "Cafe\u0301") == "Café"
    assert metrics.METRICS["exact_match"][0]("Cafe\u0301", "Café") == 1.0


@pytest.mark.parametrize("stream", [False, True])
def test_calls_whose_response_has_no_usage_still_count(worker, server, stream):
    """Defect 4: a server that answers (or streams) without ``usage`` still counts as an LM call."""
    s = f"no-usage-{stream}"
    configure(worker, server.base_url, s, "no-usage-model")
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=s)
    for _ in range(2):
        result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "q"}, "stream": stream},
                             session_id=s)
    assert result["usage"]["openai/no-usage-model"]["lm_calls"] == 1
    assert worker.call("lm_usage", session_id=s)["models"]["openai/no-usage-model"]["lm_calls"] == 2


def test_a_404_from_a_wrong_api_base_keeps_the_providers_message(worker, server):
    """Defect 5: a FastAPI-style ``{"detail": "Not Found"}`` body reaches the client."""
    s = "wrong-base"
    configure(worker, server.base_url.replace("/v1", "/nope/v1"), s, "echo")
    worker.call("create_program", {"signature": "question -> answer", "program_id": "p"}, session_id=s)
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "q"}}, session_id=s)
    assert err["category"] == "lm_invalid_request" and err["details"]["status"] == 404
    assert "Not Found" in err["message"], err["message"]


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
def test_streamed_chunks_carry_field_text_only_and_end_with_last(worker, char_server, module):
    """Defect 6: one character per SSE event; no ``[[ ## ... ## ]]`` marker in any chunk, one ``last`` per field."""
    s = f"char-stream-{module}"
    configure(worker, char_server.base_url, s, "mockllm")
    worker.call("create_program", {"signature": "question -> answer", "module": module, "program_id": "p"},
                session_id=s)
    events = []
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Why?"}, "stream": True},
                         session_id=s, on_event=events.append)
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    outputs = result["outputs"]
    assert set(c["field"] for c in chunks) == set(outputs)
    for field, value in outputs.items():
        mine = [c for c in chunks if c["field"] == field]
        assert "".join(c["text"] for c in mine) == value
        assert [c["last"] for c in mine] == [False] * (len(mine) - 1) + [True]
    assert not any("[[" in c["text"] or "##" in c["text"] for c in chunks)
