"""Scenario "sdk" (issue 16): the embeddings backend through a worker vs the same numpy code in-process.

The backend (bridge/backends/embeddings.py) is written with bridge.sdk; its
commands wrap ``Corpus`` and ``term_frequencies``. The baseline calls those
very functions in the benchmark's own process, so the difference is what the
SDK and the worker add: the frame both ways (JSON, as the Elixir client
sends), the schema check, argument conversion (documents become dataclasses),
the result's conversion (dataclasses and numpy arrays to JSON values).

- ``search``: one query (k = 5) against a corpus of N synthetic documents in a
  session; per-call latency, p50 within a repeat;
- ``add``: the whole corpus into a fresh session (the worker also receives the
  texts);
- ``embed``: 32 texts to 1024-dimension vectors (the worker also sends 32,768
  floats back).

The baseline runs in a child process; it, the worker and the client are pinned
to one CPU (``taskset -c 0``) when the machine allows, so that numpy's BLAS, which runs a
matrix product on every CPU it may use, gets one CPU on both sides. The
placement is recorded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

from .. import report
from ..harness import PYTHON, ROOT, Peer, decode, env, frame, pct, spread, worker_argv
from .common import interleave

SESSION = "bench"


def corpus(n: int, seed: int = 16) -> list[dict]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    return [{"id": f"d{i}", "text": " ".join(rng.choice(vocabulary) for _ in range(30))} for i in range(n)]


def queries(docs: list[dict], n: int, seed: int = 17) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(rng.choice(docs)["text"].split(), 4)) for _ in range(n)]


class Through:
    """The commands through a worker (one Peer, JSON frames)."""

    def __init__(self, pinned: bool) -> None:
        argv = worker_argv("--backends", "", "--expose", "bridge.backends.embeddings")
        self.peer = Peer(["taskset", "-c", "0", *argv] if pinned else argv)
        self.ids = 0
        self.call("embeddings.info")  # registered (backends register just after ready)

    def call(self, command: str, args: dict | None = None) -> dict:
        self.ids += 1
        self.peer.send(frame({"id": self.ids, "command": command, "args": args or {}, "session_id": SESSION},
                             "json"))
        while True:
            doc = decode(self.peer.recv())
            if doc.get("id") == self.ids and "event" not in doc:
                break
        if not doc["success"]:
            raise RuntimeError(f"{command}: {doc['error']}")
        return doc["result"]

    def timed(self, command: str, args: dict) -> int:
        data = frame({"id": 0, "command": command, "args": args, "session_id": SESSION}, "json")
        t0 = time.perf_counter_ns()
        self.peer.send(data)
        while True:  # events (progress) first, then the reply
            payload = self.peer.recv()
            if b'"event"' not in payload[:40]:
                break
        elapsed = time.perf_counter_ns() - t0
        assert b'"success":true' in payload, payload[:300]
        return elapsed

    def close(self) -> None:
        self.peer.close()


def timed(fn) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def sizes(quick: bool) -> tuple[int, int]:
    return (500, 100) if quick else (2000, 300)


def in_process(quick: bool) -> dict:
    """The same numpy code, called directly (run in a child process, pinned as the worker is)."""
    from bridge.backends.embeddings import Corpus, normalised, term_frequencies

    n_docs, n_queries = sizes(quick)
    docs = corpus(n_docs)
    qs = queries(docs, n_queries)
    texts = [d["text"] for d in docs[:32]]
    c = Corpus()
    add = timed(lambda: c.add([d["id"] for d in docs], [d["text"] for d in docs]))
    c.search(qs[0], 5)  # the index is built once, at the first search after adding
    search = [timed(lambda q=q: c.search(q, 5)) for q in qs]
    embed = min(timed(lambda: normalised(term_frequencies(texts, 1024)).tolist()) for _ in range(5))
    return {"add": add, "search_p50": pct(search, 0.5), "search_p99": pct(search, 0.99), "embed": embed}


def through_worker(quick: bool, pinned: bool) -> dict:
    n_docs, n_queries = sizes(quick)
    docs = corpus(n_docs)
    qs = queries(docs, n_queries)
    texts = [d["text"] for d in docs[:32]]
    w = Through(pinned)
    try:
        add = w.timed("embeddings.add", {"documents": docs})
        w.call("embeddings.search", {"query": qs[0], "k": 5})
        search = [w.timed("embeddings.search", {"query": q, "k": 5}) for q in qs]
        embed = min(w.timed("embeddings.embed", {"texts": texts, "dim": 1024}) for _ in range(5))
    finally:
        w.close()
    return {"add": add, "search_p50": pct(search, 0.5), "search_p99": pct(search, 0.99), "embed": embed}


def in_child(quick: bool, pinned: bool) -> dict:
    argv = [PYTHON, "-m", "benchmarks.scenarios.sdk", "--quick" if quick else "--full"]
    out = subprocess.run((["taskset", "-c", "0"] if pinned else []) + argv, cwd=str(ROOT), env=env(),
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out.splitlines()[-1])


def run(quick: bool) -> report.Result:
    n_docs, n_queries = sizes(quick)
    rounds = 2 if quick else 4
    # numpy's BLAS runs a matrix product on every CPU it may use: pinned, both sides get one.
    pinned = shutil.which("taskset") is not None and 0 in os.sched_getaffinity(0)
    measure = {"in-process": lambda: in_child(quick, pinned), "worker": lambda: through_worker(quick, pinned)}
    placement = os.sched_getaffinity(0)
    if pinned:  # the client too, as for every ping-type figure
        os.sched_setaffinity(0, {0})
    try:
        runs = interleave(list(measure), rounds, lambda name: measure[name]())
    finally:
        os.sched_setaffinity(0, placement)

    r = report.Result("sdk", "an SDK backend (embeddings) through a worker vs the same numpy code in-process (issue 16)")
    table = r.table(
        f"{n_docs} documents of 30 words, {n_queries} queries, dim 1024; {rounds} repeats, median [min-max] "
        "over repeats; ms except search (us)",
        ["operation", "in-process", "worker", "worker / in-process", "worker - in-process"])
    rows = [("search p50 (k=5)", "search_p50", report.us, "us"), ("search p99 (k=5)", "search_p99", report.us, "us"),
            (f"add {n_docs} documents", "add", report.ms, "ms"), ("embed 32 texts (1024 floats each)", "embed",
                                                                   report.ms, "ms")]
    for label, key, fmt, unit in rows:
        local = [x[key] for x in runs["in-process"]]
        remote = [x[key] for x in runs["worker"]]
        ratios = [b / a for a, b in zip(local, remote)]
        extra = [b - a for a, b in zip(local, remote)]
        table.add(label, report.span(spread(local), fmt), report.span(spread(remote), fmt),
                  report.span(spread(ratios), report.ratio), report.span(spread(extra), fmt) + f" {unit}")
        r.data[key] = {"in_process_ns": local, "worker_ns": remote}
    overhead = spread(b["search_p50"] - a["search_p50"] for a, b in zip(runs["in-process"], runs["worker"]))
    r.target("search p50: worker - in-process", "<= 300 us", report.span(overhead, report.us) + " us",
             overhead["median"] <= 300_000)
    r.notes.append("Pinned to CPU 0 (the client, and with taskset -c 0 the worker and the child process that runs "
                   "the in-process baseline), so numpy's BLAS uses one CPU on both sides." if pinned else
                   f"Not pinned: {os.cpu_count()} CPUs, placement (and numpy's BLAS threads) left to the scheduler.")
    r.notes.append("The worker's figures include JSON frames both ways, the derived schema check and the "
                   "conversions of bridge.sdk; `add` also carries the documents' text to the worker, `embed` "
                   "the vectors back as JSON numbers.")
    return r


if __name__ == "__main__":  # the in-process side, as a child: python -m benchmarks.scenarios.sdk --quick|--full
    print(json.dumps(in_process(sys.argv[1:] == ["--quick"])))
