"""The ``history`` and ``image`` field types (dspy.History, dspy.Image) and per-program adapters, in a real worker."""

from __future__ import annotations

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import OpenAIServer

CHAT = {"inputs": {"history": "history", "question": "str"}, "outputs": {"answer": "str"}}
VISION = {"inputs": {"photo": "image", "question": "str"}, "outputs": {"answer": "str"}}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def server():
    with OpenAIServer() as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-media")) as w:
        w.call("configure_lm", {"model": "offline"})
        yield w


def test_history_turns_reach_the_lm_as_earlier_turns(worker, server):
    s = "history-http"
    worker.call("configure_lm", {"model": "openai/chat", "api_base": server.base_url, "api_key": "k"}, session_id=s)
    worker.call("create_program", {"signature": CHAT, "program_id": "chat"}, session_id=s)
    before = len(server.seen)
    history = {"messages": [{"question": "Say hello", "answer": "Hello"}, {"question": "Louder", "answer": "HELLO"}]}
    result = worker.call("execute_program", {"program_id": "chat", "inputs": {"history": history,
                                                                               "question": "Now whisper"}},
                         session_id=s)
    messages = server.seen[before].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Say hello" in messages[1]["content"] and "HELLO" in messages[4]["content"]
    assert result["outputs"]["answer"] == "chat says answer for Now whisper"


def test_the_offline_lm_answers_from_history(worker):
    s = "history-offline"
    worker.call("create_program", {"signature": CHAT, "program_id": "chat"}, session_id=s)
    history = {"messages": [{"question": "What is your name?", "answer": "Port"}]}
    result = worker.call("execute_program", {"program_id": "chat", "inputs": {
        "history": history, "question": "What is your name?"}}, session_id=s)
    assert result["outputs"] == {"answer": "Port"}


@pytest.mark.parametrize("url", ["https://example.org/cat.png", PNG])
def test_an_image_goes_to_the_lm_as_an_image_part(worker, server, url):
    s = f"image-{len(url)}"
    worker.call("configure_lm", {"model": "openai/vision", "api_base": server.base_url, "api_key": "k"},
                session_id=s)
    worker.call("create_program", {"signature": VISION, "program_id": "v"}, session_id=s)
    before = len(server.seen)
    worker.call("execute_program", {"program_id": "v", "inputs": {"photo": {"url": url}, "question": "What?"}},
                session_id=s)
    parts = server.seen[before].messages[-1]["content"]
    assert {"type": "image_url", "image_url": {"url": url}} in parts


@pytest.mark.parametrize("photo", [
    {"url": "/etc/passwd"}, {"url": "file:///etc/passwd"}, {"url": "ftp://x/y.png"}, {"path": "cat.png"},
    {"url": "data:image/png;base64," + "A" * (8 * 1024 * 1024)},
])
def test_an_image_is_a_url_or_data_of_bounded_size_never_a_path(worker, photo):
    s = "image-refused"
    worker.call("create_program", {"signature": VISION, "program_id": "v", "replace": True}, session_id=s)
    err = error_of(worker, "execute_program", {"program_id": "v", "inputs": {"photo": photo, "question": "x"}},
                   session_id=s)
    assert (err["category"], err["code"], err["details"]["path"]) == ("validation", "wrong_type", "args.inputs.photo")
    assert worker.call("lm_usage", session_id=s)["models"] == {}


@pytest.mark.parametrize("signature", [
    {"inputs": {"q": "str"}, "outputs": {"pic": "image"}},
    {"inputs": {"q": "list[history]"}, "outputs": {"a": "str"}},
    {"inputs": {"q": {"type": {"object": {"h": "history"}}}}, "outputs": {"a": "str"}},
])
def test_history_and_image_are_top_level_inputs_only(worker, signature):
    err = error_of(worker, "create_program", {"signature": signature}, session_id="media-bad")
    assert (err["category"], err["code"]) == ("validation", "bad_type")


@pytest.mark.parametrize("adapter", ["json", "xml", "two_step"])
def test_each_adapter_runs_on_the_offline_lm_and_exports(worker, adapter):
    """The offline LM answers in ChatAdapter's format: DSPy's own fallback and extraction paths still parse it."""
    s = f"adapter-{adapter}"
    made = worker.call("create_program", {"signature": "question -> answer", "adapter": adapter, "program_id": "p"},
                       session_id=s)
    assert made["adapter"] == adapter
    doc = worker.call("export_program", {"program_id": "p"}, session_id=s)["program"]
    assert doc["options"] == {"adapter": adapter}
    assert worker.call("import_program", {"program": doc, "program_id": "q"}, session_id=s)["adapter"] == adapter
    outputs = worker.call("execute_program", {"program_id": "q", "inputs": {"question": "Why?"}}, session_id=s)
    answer = outputs["outputs"]["answer"]
    # two_step: the LM's free answer, then an extraction call whose input is that answer.
    assert answer.endswith(": Why?") if adapter != "two_step" else isinstance(answer, str) and answer
    assert outputs["usage"]["offline"]["lm_calls"] == (2 if adapter == "two_step" else 1)
