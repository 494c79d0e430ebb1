"""The second backend (bridge/backends/embeddings.py), built with bridge.sdk, in real workers."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.backends.embeddings import Corpus, term_frequencies

EXPOSE = ("--backends", "", "--expose", "bridge.backends.embeddings")

DOCS = [
    {"id": "elixir", "text": "Elixir runs on the BEAM, the Erlang virtual machine, with lightweight processes."},
    {"id": "python", "text": "Python is a dynamic language loved for machine learning and data science."},
    {"id": "dspy", "text": "DSPy programs language models with signatures, modules and optimizers."},
    {"id": "ports", "text": "An Erlang port spawns an external program and exchanges framed messages on stdio."},
    {"id": "numpy", "text": "NumPy arrays make vectorised numerical computing in Python fast."},
]


@pytest.fixture
def w(spawn):
    return spawn(*EXPOSE)


def top(worker, query: str, session: str = "s", k: int = 1) -> list[str]:
    hits = worker.call("embeddings.search", {"query": query, "k": k}, session_id=session)["hits"]
    return [h["id"] for h in hits]


def test_search_finds_the_document_a_query_is_about(w):
    assert w.call("embeddings.add", {"documents": DOCS}, session_id="s") == {"added": 5, "documents": 5}
    assert top(w, "erlang virtual machine processes") == ["elixir"]
    assert top(w, "optimiser for language model programs") == ["dspy"]  # trigrams: optimiser ~ optimizers
    assert top(w, "spawn a program over stdio") == ["ports"]
    hits = w.call("embeddings.search", {"query": "python", "k": 3}, session_id="s")["hits"]
    assert {h["id"] for h in hits[:2]} == {"python", "numpy"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]) == {"id", "score", "text"}


def test_the_corpus_belongs_to_the_session(w):
    w.call("embeddings.add", {"documents": DOCS[:2]}, session_id="a")
    w.call("embeddings.add", {"documents": DOCS[2:]}, session_id="b")
    assert w.call("embeddings.info", session_id="a") == {"documents": 2, "dim": 1024}
    assert set(top(w, "erlang python dspy numpy ports", "a", k=10)) == {"elixir", "python"}
    assert w.call("embeddings.search", {"query": "anything"})["hits"] == []  # the global scope: empty
    w.call("end_session", {"session_id": "a"})
    assert w.call("embeddings.info", session_id="a")["documents"] == 0
    assert w.call("embeddings.clear", session_id="b") == {"removed": 3}


def test_adding_an_id_again_replaces_its_document(w):
    w.call("embeddings.add", {"documents": DOCS}, session_id="s")
    result = w.call("embeddings.add", {"documents": [{"id": "python", "text": "snakes and ladders"},
                                                     {"id": "new", "text": "a new one"},
                                                     {"id": "new", "text": "a newer one"}]}, session_id="s")
    assert result == {"added": 1, "documents": 6}
    assert top(w, "snakes ladders") == ["python"]
    hit = w.call("embeddings.search", {"query": "newer", "k": 1}, session_id="s")["hits"][0]
    assert (hit["id"], hit["text"]) == ("new", "a newer one")


def test_adding_reports_progress_and_search_many_streams_one_chunk_per_query(w):
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic{i % 7}"} for i in range(1200)]
    pending = w.submit("embeddings.add", {"documents": docs, "dim": 256}, session_id="s")
    assert pending.wait(60)["result"] == {"added": 1200, "documents": 1200}
    assert [e["data"] for e in pending.events] == [{"done": n, "total": 1200} for n in (500, 1000, 1200)]
    pending = w.submit("embeddings.search_many", {"queries": ["topic3", "number 42", "topic5"], "k": 2},
                       session_id="s")
    reply = pending.wait(60)
    assert reply["result"] == {"queries": 3}
    chunks = [e["data"]["value"] for e in pending.events if e["event"] == "chunk"]
    assert [c["query"] for c in chunks] == ["topic3", "number 42", "topic5"]
    assert chunks[1]["hits"][0]["id"] == "d42"


def test_bad_input_is_refused_with_validation_errors(w):
    w.call("embeddings.add", {"documents": DOCS}, session_id="s")
    for args, command in [({"documents": [{"id": "x"}]}, "add"), ({"documents": DOCS, "dim": 4}, "add"),
                          ({"query": "q", "k": 0}, "search"), ({"query": 3}, "search"),
                          ({"texts": "not a list"}, "embed")]:
        reply = w.request(f"embeddings.{command}", args, session_id="s")
        assert (reply["error"]["category"], reply["error"]["code"]) == ("validation", "invalid_args"), args
    reply = w.request("embeddings.add", {"documents": DOCS, "dim": 512}, session_id="s")
    assert (reply["error"]["category"], reply["error"]["code"]) == ("validation", "invalid_value")
    assert "clear it to change dim" in reply["error"]["message"]


def test_embeddings_are_the_same_in_every_process(spawn):
    texts = ["the same text", "another text, longer, with punctuation!", ""]
    a = spawn(*EXPOSE).call("embeddings.embed", {"texts": texts, "dim": 64})
    b = spawn(*EXPOSE, fmt="msgpack").call("embeddings.embed", {"texts": texts, "dim": 64})
    assert a == b and a["dim"] == 64
    vectors = np.array(a["vectors"])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0) and not vectors[2].any()
    local = term_frequencies(texts[:1], 64)[0]
    assert np.allclose(vectors[0], local / np.linalg.norm(local), atol=1e-6)  # the same numpy code in-process


def test_the_corpus_in_process():
    corpus = Corpus(dim=128)
    corpus.add([d["id"] for d in DOCS], [d["text"] for d in DOCS])
    (doc_id, score, _), *_ = corpus.search(DOCS[3]["text"], k=5)
    assert doc_id == "ports" and score == pytest.approx(1.0, abs=1e-5)  # a document is nearest to itself
    assert len(corpus.search("x", k=50)) == 5
    assert Corpus().search("empty corpus") == []
