"""Parity of pipelines: a pipeline sent as data sends the LM what the hand-written ``dspy.Module`` sends.

Each case is written twice: as a DSPy user writes it (a ``dspy.Module`` with
its steps as attributes and a ``forward`` that calls them, retrieval through
DSPy's own ``dspy.retrievers.Embeddings``), run in this process; and as a
``create_program {"module": "Pipeline", ...}`` declaration run by a real
worker. One loopback server answers both and records every request body;
the two sequences must be equal, request for request, and so must the
outputs, the predictor names and, after optimisation, what was learned.
"""

from __future__ import annotations

import asyncio
import json

import dspy
import pytest

from bridge.backends.dspy import offline_embed
from tests.support.dspy_workers import dspy_worker
from tests.test_dspy_parity import ADD_TOOL, KEY, REACT_SCRIPT, add, bodies, exact, plain_lm
from tests.test_dspy_parity import server  # noqa: F401 - the same loopback server fixture

CORPUS = [
    "Paris is the capital of France.",
    "France is a country in western Europe.",
    "Berlin is the capital of Germany.",
    "The Seine flows through Paris.",
    "Elixir runs on the BEAM virtual machine.",
    "DSPy programs are built from signatures and modules.",
]
DIMS, K, HOPS = 64, 2, 2
SEARCH = dspy.retrievers.Embeddings(corpus=CORPUS, embedder=dspy.Embedder(offline_embed.embedder(DIMS),
                                                                             caching=False), k=K)


class MultiHop(dspy.Module):
    """DSPy's multi-hop RAG, as its tutorials write it."""

    def __init__(self):
        super().__init__()
        self.generate_query = dspy.ChainOfThought("context, question -> query")
        self.generate_answer = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question):
        context = []
        for _ in range(HOPS):
            query = self.generate_query(context=context, question=question).query
            context = context + SEARCH(query).passages
        return dspy.Prediction(answer=self.generate_answer(context=context, question=question).answer)


MULTI_HOP = {"module": "Pipeline", "signature": "question -> answer", "steps": [
    {"name": "hop", "repeat": HOPS, "collect": {"context": "search.passages"}, "steps": [
        {"name": "generate_query", "module": "ChainOfThought", "signature": "context, question -> query",
         "inputs": {"context": "hop.context"}},
        {"name": "search", "retrieve": {"index_id": "kb", "query": "generate_query.query", "k": K}}]},
    {"name": "generate_answer", "module": "ChainOfThought", "signature": "context, question -> answer",
     "inputs": {"context": "hop.context"}}]}


class Triage(dspy.Module):
    def __init__(self):
        super().__init__()
        self.classify = dspy.Predict("question -> topic")
        self.respond = dspy.ChainOfThought("question, topic -> answer")

    def forward(self, question):
        topic = self.classify(question=question).topic
        return self.respond(question=question, topic=topic)


TRIAGE = {"module": "Pipeline", "signature": "question -> reasoning, answer", "steps": [
    {"name": "classify", "signature": "question -> topic"},
    {"name": "respond", "module": "ChainOfThought", "signature": "question, topic -> answer",
     "inputs": {"topic": "classify.topic"}}]}


class Checked(dspy.Module):
    """An agent, then a second opinion on its answer."""

    def __init__(self):
        super().__init__()
        self.agent = dspy.ReAct("question -> answer", tools=[add], max_iters=4)
        self.check = dspy.Predict("question, answer -> verdict")

    def forward(self, question):
        answer = self.agent(question=question).answer
        return dspy.Prediction(answer=answer, verdict=self.check(question=question, answer=answer).verdict)


CHECKED = {"module": "Pipeline", "signature": "question -> answer, verdict", "steps": [
    {"name": "agent", "module": "ReAct", "signature": "question -> answer", "tools": [ADD_TOOL], "max_iters": 4},
    {"name": "check", "signature": "question, answer -> verdict", "inputs": {"answer": "agent.answer"}}]}

CASES = {
    "two-steps": (Triage, TRIAGE, "How do I reset my password?", ()),
    "multi-hop-retrieval": (MultiHop, MULTI_HOP, "Which river flows through the capital of France?", ()),
    "react-then-check": (Checked, CHECKED, "What is 2 + 3?", REACT_SCRIPT),
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-pipeline-parity")) as w:
        yield w


def session_for(worker, server, model: str, create: dict) -> str:
    """A session with the model, the offline embedder, the corpus as index ``kb`` and the program ``p``."""
    session = f"pipeline-{model}"
    worker.call("configure_lm", {"model": f"openai/{model}", "api_base": server.base_url, "api_key": KEY,
                                 "num_retries": 0}, session_id=session)
    worker.call("configure_embedder", {"model": "offline", "dimensions": DIMS}, session_id=session)
    worker.call("create_index", {"index_id": "kb", "corpus": CORPUS, "k": K}, session_id=session)
    worker.call("create_program", {**create, "program_id": "p"}, session_id=session)
    return session


def run_plain(server, model: str, program, question: str, script=()) -> tuple[list, dict]:
    server.script(model, *script)
    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        prediction = program(question=question)
    return bodies(server, start), json.loads(json.dumps(dict(prediction.items()), default=str))


@pytest.mark.parametrize("case", list(CASES))
def test_a_pipeline_sends_and_returns_what_its_hand_written_module_does(worker, server, case):
    make, create, question, script = CASES[case]
    model = f"pipe-{case}"
    plain = make()
    plain_requests, plain_outputs = run_plain(server, model, plain, question, script)
    session = session_for(worker, server, model, create)
    server.script(model, *script)
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": question}},
                         session_id=session, callbacks={"add": lambda args: add(**args)})
    assert bodies(server, start) == plain_requests and len(plain_requests) >= 2
    assert {k: result["outputs"][k] for k in plain_outputs} == plain_outputs
    described = worker.call("get_program", {"program_id": "p"}, session_id=session)
    assert described["predictors"] == [name for name, _ in plain.named_predictors()]


def test_streaming_a_pipeline_sends_what_streamify_of_the_hand_written_module_sends(worker, server):
    model, question = "pipe-stream", "Where does the Seine flow?"
    plain = MultiHop()
    listeners = [dspy.streaming.StreamListener(signature_field_name=field, predict=predictor, predict_name=name)
                 for name, predictor in plain.named_predictors() for field in predictor.signature.output_fields]

    async def consume():
        final = None
        async for item in dspy.streamify(plain, stream_listeners=listeners)(question=question):
            if isinstance(item, dspy.Prediction):
                final = item
        return final

    start = len(server.seen)
    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        prediction = asyncio.run(consume())
    plain_requests = bodies(server, start)
    session = session_for(worker, server, model, MULTI_HOP)
    events: list = []
    start = len(server.seen)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"question": question}, "stream": True},
                         session_id=session, on_event=events.append)
    requests = bodies(server, start)
    assert requests == plain_requests and all(json.loads(r)["stream"] is True for r in requests)
    assert result["outputs"] == dict(prediction.items())
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert {c["predictor"] for c in chunks} == {"generate_query.predict", "generate_answer.predict"}
    answer = "".join(c["text"] for c in chunks if c["predictor"] == "generate_answer.predict"
                     and c["field"] == "answer")
    assert answer == result["outputs"]["answer"]


QUESTIONS = ["Which river flows through Paris?", "What is the capital of Germany?", "Where is France?",
             "What runs on the BEAM?", "What are DSPy programs built from?", "Which city is on the Seine?"]


def test_bootstrapping_a_pipeline_sends_learns_and_then_sends_what_plain_dspy_does(worker, server):
    model = "pipe-bootstrap"
    # Labels the server's answers match for every other question, so that some runs become demos.
    labels = [run_plain(server, model, MultiHop(), q)[1]["answer"] if i % 2 == 0 else "no"
              for i, q in enumerate(QUESTIONS)]
    trainset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in zip(QUESTIONS, labels)]
    start = len(server.seen)
    optimizer = dspy.teleprompt.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2, max_labeled_demos=2,
                                                 metric_threshold=1.0)
    with dspy.context(lm=plain_lm(server, model), adapter=dspy.ChatAdapter()):
        compiled = optimizer.compile(MultiHop(), trainset=trainset)
    plain_requests = sorted(bodies(server, start))

    session = session_for(worker, server, model, MULTI_HOP)
    start = len(server.seen)
    result = worker.call("optimize_program", {
        "program_id": "p", "optimizer": "BootstrapFewShot", "metric": "exact_match",
        "options": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
        "trainset": [{"inputs": {"question": q}, "outputs": {"answer": a}} for q, a in zip(QUESTIONS, labels)]},
        session_id=session, timeout_ms=120_000)
    assert sorted(bodies(server, start)) == plain_requests
    assert result["bootstrapped"] > 0
    learned = worker.call("export_program", {"program_id": "p"}, session_id=session)["program"]["state"]
    plain_state = {name: {"instructions": p.signature.instructions, "demos": [dict(d) for d in p.demos]}
                   for name, p in compiled.named_predictors()}
    assert learned["predictors"] == json.loads(json.dumps(plain_state))
    assert all(state["demos"] for state in learned["predictors"].values())  # every predictor tuned

    question = "Is Berlin a capital?"
    plain_requests, plain_outputs = run_plain(server, model, compiled, question)
    start = len(server.seen)
    outputs = worker.call("execute_program", {"program_id": "p", "inputs": {"question": question}},
                          session_id=session)["outputs"]
    assert bodies(server, start) == plain_requests and outputs == plain_outputs
