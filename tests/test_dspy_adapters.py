"""Every adapter (chat, json, xml, two_step) through a real worker: offline answers of every type, and streaming.

The offline LM answers each adapter in its own format, with a value of each
whitelisted type, so a json-adapter program with non-text outputs runs (and
is tested) with no provider. Streaming is tested against a loopback provider
that sends one character per SSE event, a few, or the whole answer at once:
each field's chunks join to exactly its final value, and nothing of the
format (markers, JSON syntax, tags) or of another field leaks into them.
"""

from __future__ import annotations

import json

import pytest

from bridge.backends.dspy import fieldtypes
from tests.support.dspy_workers import error_of, module_worker
from tests.support.openai_server import OpenAIServer

ADAPTERS = ["chat", "json", "xml", "two_step"]
TYPED = {
    "inputs": {"ticket": "str"},
    "outputs": {"count": "int", "ratio": "float", "urgent": "bool", "tags": "list[str]",
                "scores": "dict[str, int]", "level": "Literal['low', 'high']", "note": "Optional[str]",
                "owner": {"type": {"object": {"team": "str", "size": "int"}, "name": "Owner"}},
                "people": {"type": {"list": {"object": {"name": "str", "age": "optional[int]"}}}}},
}


worker = module_worker("dspy-adapters")


def offline(worker, session: str) -> None:
    worker.call("configure_lm", {"model": "offline"}, session_id=session)


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_offline_lm_answers_every_adapter_with_every_type(worker, adapter, module):
    s = f"offline-{adapter}-{module}"
    offline(worker, s)
    created = worker.call("create_program", {"signature": TYPED, "adapter": adapter, "module": module,
                                             "program_id": "p"}, session_id=s)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "The app <crashes> & logs"}},
                         session_id=s)
    outputs = result["outputs"]
    for name, field in created["signature"]["outputs"].items():
        fieldtypes.check(field["type"], outputs[name], name)
    assert outputs["tags"][0].startswith("tags ") and outputs["level"] in ("low", "high")
    calls = result["usage"]["offline"]["lm_calls"]
    assert calls == (2 if adapter == "two_step" else 1)  # answered in the adapter's own format, no fallback
    again = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "The app <crashes> & logs"}},
                        session_id=s)
    assert again["outputs"] == outputs  # deterministic


# -- streaming: chunks carry field text only, for every adapter that streams ------------------------------

STREAMING = ["chat", "json", "xml"]
TRICKY = 'say "hi" \\ to a < b & c, é 😀 [[ ## topic ## ]] {"x": 1} </topic> done'
SCRIPTS = {  # answers with values that each format must escape, as a provider would send them
    "chat": f"[[ ## answer ## ]]\n{TRICKY}\n\n[[ ## topic ## ]]\nfine\n\n[[ ## completed ## ]]",
    "json": '{"answer": ' + json.dumps(TRICKY) + ', "topic": "fine"}',
    "xml": "<answer>\n" + TRICKY.replace("&", "&amp;").replace("<", "&lt;") + "\n</answer>\n<topic>\nfine\n</topic>",
}


@pytest.fixture(scope="module", params=[1, 4, 1000], ids=["1-char", "4-chars", "whole"])
def server(request):
    """A loopback provider streaming its answers in pieces of this many characters per SSE event."""
    with OpenAIServer(chunk_chars=request.param) as s:
        yield s


def chunks_of(events: list) -> list[dict]:
    return [e["data"] for e in events if e["event"] == "chunk"]


def assert_fields_streamed(chunks: list[dict], outputs: dict, text_fields) -> None:
    """Each field's pieces end with one last chunk and join to its final value; no other field's text leaks."""
    assert {c["field"] for c in chunks} == set(outputs)
    for field in outputs:
        mine = [c for c in chunks if c["field"] == field]
        assert [c["last"] for c in mine] == [False] * (len(mine) - 1) + [True], mine
        if field in text_fields:
            assert "".join(c["text"] for c in mine) == outputs[field], (field, mine)


@pytest.mark.parametrize("scripted", [False, True], ids=["plain", "tricky"])
@pytest.mark.parametrize("adapter", STREAMING)
def test_streamed_chunks_join_to_each_field_over_http(worker, server, adapter, scripted):
    model = f"stream-{adapter}-{server.settings.chunk_chars}-{scripted}"
    s = f"http-{model}"
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": "k",
                                 "num_retries": 0}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer, topic", "adapter": adapter, "program_id": "p"},
                session_id=s)
    if scripted:
        server.script(model, SCRIPTS[adapter])
    events: list = []
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Why?"}, "stream": True},
                         session_id=s, on_event=events.append)
    outputs = result["outputs"]
    assert outputs["answer"] == (TRICKY if scripted else f"{model} says answer for Why?")
    assert_fields_streamed(chunks_of(events), outputs, ("answer", "topic"))


@pytest.mark.parametrize("adapter", STREAMING)
def test_the_offline_lm_streams_typed_programs_in_every_format(worker, adapter):
    s = f"offline-stream-{adapter}"
    offline(worker, s)
    created = worker.call("create_program", {"signature": TYPED, "adapter": adapter, "module": "ChainOfThought",
                                             "program_id": "p"}, session_id=s)
    events: list = []
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "It \"broke\" <again> & again"},
                                             "stream": True}, session_id=s, on_event=events.append)
    chunks = chunks_of(events)
    text_fields = [n for n, f in created["signature"]["outputs"].items() if f["type"] == "str"] + ["reasoning"]
    assert_fields_streamed(chunks, result["outputs"], text_fields)
    if adapter == "json":  # a typed value streams as its JSON text
        count = "".join(c["text"] for c in chunks if c["field"] == "count")
        assert json.loads(count) == result["outputs"]["count"]


def test_streaming_a_two_step_program_is_refused_before_any_lm_request(worker):
    with OpenAIServer() as server:
        refused_before_any_lm_request(worker, server)


def refused_before_any_lm_request(worker, server) -> None:
    s = "two-step-stream"
    worker.call("configure_lm", {"model": "openai/two-step", "api_base": server.base_url, "api_key": "k",
                                 "num_retries": 0}, session_id=s)
    worker.call("create_program", {"signature": "question -> answer", "adapter": "two_step", "program_id": "p"},
                session_id=s)
    before = len(server.seen)
    events: list = []
    err = error_of(worker, "execute_program", {"program_id": "p", "inputs": {"question": "Why?"}, "stream": True},
                   session_id=s, on_event=events.append)
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", "stream_not_supported",
                                                                      "args.stream")
    assert "two_step" in err["message"] and len(server.seen) == before and not chunks_of(events)
    plain = worker.call("execute_program", {"program_id": "p", "inputs": {"question": "Why?"}}, session_id=s)
    assert plain["outputs"]["answer"] and len(server.seen) == before + 2  # the answer, then the extraction
