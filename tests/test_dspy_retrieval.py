"""Retrieval through a real worker: embedders, indexes held in sessions, ``retrieve``, retrieve -> generate.

The provider path goes over HTTP to the loopback server's ``/v1/embeddings``
through DSPy's ``dspy.Embedder`` (litellm), exactly as to a provider; the
offline embedder needs no network. The search must agree with DSPy's own
``dspy.retrievers.Embeddings`` over the same vectors, and a retrieving
program must send the LM what DSPy's RAG tutorial module sends.
"""

from __future__ import annotations

import pytest

from tests.support.dspy_workers import dspy_worker, error_of
from tests.support.openai_server import EMBEDDING_DIMS, OpenAIServer, embedding

API_KEY = "sk-portbridge-retrieval-4d2c8b"
CORPUS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Elixir language runs on the BEAM virtual machine.",
    "DSPy programs are built from signatures and modules.",
    "Python workers speak length-prefixed frames on stdin and stdout.",
]


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-retrieval")) as w:
        yield w


def provider(worker, server, session: str, model: str = "emb-1", **extra) -> dict:
    args = {"model": f"openai/{model}", "api_base": server.base_url, "api_key": API_KEY, "num_retries": 0, **extra}
    return worker.call("configure_embedder", args, session_id=session)


def test_a_provider_embedder_indexes_a_corpus_over_http_and_retrieves(worker, server):
    s = "provider"
    reply = provider(worker, server, s, batch_size=2)
    assert reply["model"] == "openai/emb-1" and reply["api_key_set"] is True and API_KEY not in str(reply)
    before = len(server.seen)
    events = []
    index = worker.call("create_index", {"index_id": "facts", "corpus": CORPUS}, session_id=s,
                        on_event=events.append)
    calls = [seen for seen in server.seen[before:] if seen.path == "/v1/embeddings"]
    assert [c.body["input"] for c in calls] == [CORPUS[0:2], CORPUS[2:4], CORPUS[4:5]]  # batch_size 2
    assert all(c.authorization == f"Bearer {API_KEY}" and c.body["model"] == "emb-1" for c in calls)
    assert index == {**index, "index_id": "facts", "count": 5, "dimensions": EMBEDDING_DIMS, "k": 5,
                     "embedder": "openai/emb-1", "scope": "session"}
    assert index["bytes"] == sum(len(p.encode()) for p in CORPUS) + 5 * EMBEDDING_DIMS * 4
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress[0] == {"embedded": 0, "total": 5} and progress[-1] == {"embedded": 5, "total": 5}

    hits = worker.call("retrieve", {"index_id": "facts", "query": "capital of France", "k": 2}, session_id=s)
    assert hits["passages"][0] == CORPUS[0] and hits["indices"][0] == 0 and len(hits["passages"]) == 2
    assert server.seen[-1].body["input"] == ["capital of France"]
    # The same ranking DSPy's own retriever computes from the same vectors.
    import numpy as np

    dspy = pytest.importorskip("dspy")
    reference = dspy.retrievers.EmbeddingsWithScores(CORPUS, lambda texts: np.array([embedding(t) for t in texts]),
                                                     k=2)
    expected = reference("capital of France")
    assert hits["indices"] == expected.indices and hits["passages"] == expected.passages
    assert hits["scores"] == pytest.approx(expected.scores, abs=1e-6)


def test_provider_failures_land_in_lm_categories(worker, server):
    s = "provider-fail"
    worker.call("configure_embedder", {"model": "openai/emb-1", "api_base": server.base_url, "api_key": "sk-wrong-key",
                                       "num_retries": 0}, session_id=s)
    error = error_of(worker, "create_index", {"corpus": ["a"]}, session_id=s)
    assert error["category"] == "lm_auth" and error["details"]["status"] == 401
    worker.call("configure_embedder", {"model": "openai/emb-1", "api_base": "http://127.0.0.1:1/v1",
                                       "api_key": API_KEY, "num_retries": 0}, session_id=s)
    assert error_of(worker, "create_index", {"corpus": ["a"]}, session_id=s)["category"] == "lm_unavailable"
    assert worker.call("list_indexes", {}, session_id=s) == {"indexes": [], "count": 0}


def test_the_offline_embedder_is_deterministic_and_sessions_hold_their_own_indexes(worker):
    for s in ("off-a", "off-b"):
        assert worker.call("configure_embedder", {"model": "offline", "dimensions": 64}, session_id=s)["dimensions"] \
            == 64
    worker.call("create_index", {"index_id": "kb", "corpus": CORPUS, "k": 1}, session_id="off-a")
    worker.call("create_index", {"index_id": "kb", "corpus": CORPUS[::-1], "k": 1}, session_id="off-b")
    a = worker.call("retrieve", {"index_id": "kb", "query": "Which machine runs Elixir?"}, session_id="off-a")
    b = worker.call("retrieve", {"index_id": "kb", "query": "Which machine runs Elixir?"}, session_id="off-b")
    assert a["passages"] == b["passages"] == [CORPUS[2]] and a["indices"] == [2] and b["indices"] == [2]
    assert a["scores"] == b["scores"]
    assert error_of(worker, "retrieve", {"index_id": "kb", "query": "x"}, session_id="off-c")["code"] == \
        "unknown_index"
    assert error_of(worker, "create_index", {"index_id": "kb", "corpus": ["x"]}, session_id="off-a")["code"] == \
        "index_exists"
    listing = worker.call("list_indexes", {}, session_id="off-a")
    assert listing["count"] == 1 and listing["indexes"][0]["dimensions"] == 64
    assert worker.call("delete_index", {"index_id": "kb"}, session_id="off-a")["deleted"] is True
    assert error_of(worker, "retrieve", {"index_id": "kb", "query": "x"}, session_id="off-a")["category"] == \
        "not_found"


def test_bounds_and_bad_requests_are_refused(worker):
    s = "bounds"
    assert error_of(worker, "create_index", {"corpus": ["x"]}, session_id=s)["code"] == "no_embedder_configured"
    worker.call("configure_embedder", {"model": "offline", "dimensions": 4096}, session_id=s)
    assert error_of(worker, "create_index", {"corpus": []}, session_id=s)["category"] == "validation"
    assert error_of(worker, "create_index", {"corpus": ["x" * 10_001]}, session_id=s)["category"] == "validation"
    # 2,100 passages of 4096 float32 dimensions pass the 32 MiB an index may hold.
    error = error_of(worker, "create_index", {"corpus": [f"passage {i}" for i in range(2100)]}, session_id=s)
    assert error["code"] == "index_too_large" and error["details"]["max_index_bytes"] == 32 * 1024 * 1024
    error = error_of(worker, "configure_embedder", {"model": "offline", "api_base": "http://127.0.0.1:9/v1"},
                     session_id=s)
    assert error["code"] == "offline_takes_no_endpoint"
    limits = worker.call("describe", {})["backends"]["dspy"]["limits"]
    assert limits["max_corpus_passages"] == 10_000 and limits["max_index_bytes_per_worker"] > 0


def test_a_retrieving_program_fills_its_context_like_dspys_rag_module(worker, server):
    s = "rag"
    provider(worker, server, s)
    worker.call("configure_lm", {"model": "openai/rag-lm", "api_base": server.base_url, "api_key": API_KEY,
                                 "num_retries": 0}, session_id=s)
    worker.call("create_index", {"index_id": "facts", "corpus": CORPUS}, session_id=s)
    created = worker.call("create_program", {
        "program_id": "rag", "module": "ChainOfThought", "signature": "context, question -> response",
        "retrieve": {"index_id": "facts", "k": 2}}, session_id=s)
    assert created["retrieve"] == {"index_id": "facts", "query": "question", "context": "context", "k": 2}
    before = len(server.seen)
    result = worker.call("execute_program", {"program_id": "rag", "inputs": {"question": "capital of Germany?"}},
                         session_id=s)
    assert result["retrieved"]["passages"][0] == CORPUS[1] and len(result["retrieved"]["passages"]) == 2
    assert result["outputs"]["response"].startswith("rag-lm says response")
    lm_calls = [seen for seen in server.seen[before:] if seen.path == "/v1/chat/completions"]
    assert len(lm_calls) == 1

    # The same program in plain DSPy (the RAG tutorial's module) sends the LM the same messages.
    import numpy as np

    dspy = pytest.importorskip("dspy")
    search = dspy.retrievers.Embeddings(CORPUS, lambda texts: np.array([embedding(t) for t in texts]), k=2)
    respond = dspy.ChainOfThought("context, question -> response")
    lm = dspy.LM("openai/rag-lm", api_base=server.base_url, api_key=API_KEY, cache=False, num_retries=0)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        question = "capital of Germany?"
        respond(context=search(question).passages, question=question)
    assert server.seen[-1].messages == lm_calls[0].messages

    # Inputs: the caller does not send the context; the pipeline is checked against the signature.
    assert error_of(worker, "execute_program", {"program_id": "rag", "inputs": {"question": "q", "context": "c"}},
                    session_id=s)["category"] == "validation"
    for bad in ({"index_id": "facts", "query": "missing"}, {"index_id": "facts", "context": "question"}):
        error = error_of(worker, "create_program", {"signature": "context, question -> response", "retrieve": bad},
                         session_id=s)
        assert error["code"] == "bad_pipeline"
    # The program exports with its pipeline and runs again once imported.
    doc = worker.call("export_program", {"program_id": "rag"}, session_id=s)["program"]
    assert doc["options"]["retrieve"]["index_id"] == "facts"
    worker.call("import_program", {"program": doc, "program_id": "rag2"}, session_id=s)
    again = worker.call("execute_program", {"program_id": "rag2", "inputs": {"question": "capital of Germany?"}},
                        session_id=s)
    assert again["retrieved"] == result["retrieved"]


def test_rag_runs_offline_streams_optimises_and_evaluates(worker):
    s = "rag-offline"
    worker.call("configure_lm", {"model": "offline"}, session_id=s)
    worker.call("configure_embedder", {"model": "offline"}, session_id=s)
    worker.call("create_index", {"index_id": "kb", "corpus": CORPUS, "k": 1}, session_id=s)
    worker.call("create_program", {"program_id": "rag", "signature": {
        "inputs": {"question": {"type": "str"}, "passages": {"type": "list[str]"}},
        "outputs": {"answer": {"type": "str"}}}, "retrieve": {"index_id": "kb", "context": "passages"}},
        session_id=s)
    events = []
    result = worker.call("execute_program", {"program_id": "rag", "inputs": {"question": "Where does Elixir run?"},
                                             "stream": True}, session_id=s, on_event=events.append)
    assert result["retrieved"]["passages"] == [CORPUS[2]]
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert "".join(c["text"] for c in chunks) == result["outputs"]["answer"] and chunks[-1]["last"] is True
    trainset = [{"inputs": {"question": "capital of France?"}, "outputs": {"answer": "Paris"}},
                {"inputs": {"question": "capital of Germany?"}, "outputs": {"answer": "Berlin"}}]
    optimized = worker.call("optimize_program", {"program_id": "rag", "optimizer": "BootstrapFewShot",
                                                 "trainset": trainset, "metric": "contains"}, session_id=s)
    assert optimized["program_id"] == "rag"
    evaluated = worker.call("evaluate_program", {"program_id": "rag", "devset": trainset, "metric": "contains"},
                            session_id=s)
    assert evaluated["count"] == 2 and evaluated["errors"] == 0
    worker.call("delete_index", {"index_id": "kb"}, session_id=s)
    error = error_of(worker, "execute_program", {"program_id": "rag", "inputs": {"question": "q"}}, session_id=s)
    assert error["code"] == "unknown_index"


def in_use(worker) -> int:
    return worker.call("describe", {})["backends"]["dspy"]["retrieval"]["index_bytes_in_use"]


def test_ending_a_session_frees_its_index_memory(worker):
    s = "memory"
    worker.call("configure_embedder", {"model": "offline"}, session_id=s)
    before = in_use(worker)
    index = worker.call("create_index", {"index_id": "kb", "corpus": CORPUS}, session_id=s)
    assert in_use(worker) == before + index["bytes"]
    worker.call("create_index", {"index_id": "kb", "corpus": CORPUS[:2], "replace": True}, session_id=s)
    assert in_use(worker) < before + index["bytes"]
    worker.call("end_session", {"session_id": s})
    assert in_use(worker) == before
    assert error_of(worker, "retrieve", {"index_id": "kb", "query": "x"}, session_id=s)["category"] == "not_found"
