"""Pipelines as data (issue 19): what a pipeline costs over the hand-written ``dspy.Module``.

The programs are a chain of ``Predict`` steps: ``step0`` answers the question,
each next step gets the question and the previous answer as its draft; the
worker gets it as a ``Pipeline`` declaration, the in-process side
(benchmarks/inprocess_pipeline.py) as the module a user writes.

* ``pipeline_cpu``: worker CPU per call (every thread of the worker process,
  from /proc/<pid>/task/*/schedstat) against the in-process module's CPU per
  call (``time.process_time``), offline LM, sequential calls in interleaved
  rounds. The single ``Predict`` program, the same way, gives the bridge's cost
  per call; what a pipeline adds per step is its overhead beyond that, divided
  by its steps.
* ``pipeline_throughput``: a 3-step chain, 32 calls in flight, the loopback
  server answering after 50 ms: one worker against plain DSPy in 32 threads of
  one process.
"""

from __future__ import annotations

import os

from .. import report
from ..harness import Peer, spread
from .common import call
from .lm import LMServer, check_replies, compare_rates, dspy_worker, execute_frame, in_process_child, sustained

PER_STEP_US = 100  # the target: worker CPU a pipeline adds per step
LISTED_MODEL = "openai/gpt-4o-mini"  # a name in DSPy's model table: no metadata scan on either side


def chain(steps: int) -> dict:
    """The create_program args of the chain as a pipeline."""
    declared = [{"name": "step0", "signature": "question -> answer"}]
    declared += [{"name": f"step{i}", "signature": "question, draft -> answer",
                  "inputs": {"draft": f"step{i - 1}.answer"}} for i in range(1, steps)]
    return {"module": "Pipeline", "signature": "question -> answer", "steps": declared}


def create_chains(peer: Peer, sizes) -> None:
    for steps in sizes:
        call(peer, "create_program", {**chain(steps), "program_id": f"chain{steps}"})


def worker_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid`` (the worker's handler threads live as long as it does)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def sequential_cpu(peer: Peer, program_id: str, n: int, first_id: int) -> int:
    """Worker CPU ns for ``n`` execute_program calls, one after another."""
    before = worker_cpu_ns(peer.pid)
    for i in range(n):
        peer.send(execute_frame(first_id + i, program_id))
        check_replies([peer.recv()])
    return worker_cpu_ns(peer.pid) - before


def run_cpu(quick: bool) -> report.Result:
    sizes = (1, 3) if quick else (1, 3, 6)
    rounds, per_round = (3, 20) if quick else (5, 60)
    r = report.Result("pipeline_cpu", "worker CPU of a pipeline vs the hand-written dspy.Module in-process, "
                                      "offline LM (issue 19)")
    table = r.table(f"{rounds} interleaved rounds x {per_round} sequential calls; CPU us per call, median "
                    "[min-max] of the rounds",
                    ["program", "steps", "worker", "in-process", "overhead", "added per step"])
    child, in_process = in_process_child("benchmarks.inprocess_pipeline")
    peer = dspy_worker({"model": "offline"})
    rows: dict[str, dict] = {}
    try:
        create_chains(peer, sizes)
        programs = [("p", 0)] + [(f"chain{n}", n) for n in sizes]
        rid = 1
        for program_id, steps in programs:  # warm both sides
            sequential_cpu(peer, program_id, 3, rid)
            rid += 3
            in_process(f"cpu {steps} 3")
        for k in range(rounds):
            for program_id, steps in (programs if k % 2 == 0 else programs[::-1]):
                row = rows.setdefault(program_id, {"steps": steps, "worker": [], "inprocess": []})
                sides = [("worker", lambda: sequential_cpu(peer, program_id, per_round, rid)),
                         ("inprocess", lambda: in_process(f"cpu {steps} {per_round}"))]
                for side, measure in (sides if k % 2 == 0 else sides[::-1]):
                    row[side].append(measure() / per_round)
                rid += per_round
    finally:
        peer.close()
        child.stdin.close()
        child.wait(10)
    base = [w - i for w, i in zip(rows["p"]["worker"], rows["p"]["inprocess"])]
    for program_id, row in rows.items():
        overhead = [w - i for w, i in zip(row["worker"], row["inprocess"])]
        row["overhead"] = overhead
        per_step = [(o - b) / row["steps"] for o, b in zip(overhead, base)] if row["steps"] else None
        row["added_per_step"] = per_step
        table.add("Predict program" if program_id == "p" else "Pipeline (chain of Predict)", row["steps"] or 1,
                  report.span(spread(row["worker"]), report.us), report.span(spread(row["inprocess"]), report.us),
                  report.span(spread(overhead), report.us),
                  report.span(spread(per_step), report.us) if per_step else "")
    largest = max(sizes)
    s = spread(rows[f"chain{largest}"]["added_per_step"])
    r.target(f"worker CPU a {largest}-step pipeline adds per step", f"<= {PER_STEP_US} us",
             report.span(s, report.us) + " us", s["median"] <= PER_STEP_US * 1000)
    r.data["rows"] = rows
    r.notes.append("Added per step: (the pipeline's overhead over its hand-written module - the single Predict "
                   "program's overhead over dspy.Predict in-process) / steps; the bridge's cost per call (frames, "
                   "checks, usage) is in the Predict program's row.")
    r.notes.append("Worker CPU counts every thread of the worker process (the reading thread included).")
    return r


def run_throughput(quick: bool) -> report.Result:
    steps, concurrency, latency_ms = 3, 32, 50
    total, rounds = (96, 2) if quick else (320, 3)
    r = report.Result("pipeline_throughput", f"a {steps}-step pipeline, {concurrency} calls in flight, "
                                             f"{latency_ms} ms LM: one worker vs the hand-written module in "
                                             f"{concurrency} threads of plain DSPy (issue 19)")
    table = r.table(f"{rounds} interleaved rounds of {total} calls ({steps} LM calls each); calls per second",
                    ["side", "calls/s: median [min-max]"])
    child, in_process = in_process_child("benchmarks.inprocess_pipeline")
    worker_rates, inproc_rates = [], []
    try:
        with LMServer(latency_ms) as server:
            peer = dspy_worker(server.lm(LISTED_MODEL))
            try:
                create_chains(peer, [steps])
                program_id, rid = f"chain{steps}", 1
                sustained(peer, concurrency, concurrency, rid, program_id)  # warm
                rid += concurrency
                instruction = f"threads {server.url} {LISTED_MODEL} {steps} {concurrency}"
                in_process(f"{instruction} {concurrency}")
                for k in range(rounds):
                    def worker_round() -> None:
                        nonlocal rid
                        worker_rates.append(total / (sustained(peer, concurrency, total, rid, program_id) / 1e9))
                        rid += total

                    def inproc_round() -> None:
                        inproc_rates.append(total / (in_process(f"{instruction} {total}") / 1e9))

                    for step in ((worker_round, inproc_round) if k % 2 == 0 else (inproc_round, worker_round)):
                        step()
            finally:
                peer.close()
    finally:
        child.stdin.close()
        child.wait(10)
    compare_rates(r, table, ("one worker (frames), Pipeline", worker_rates),
                  (f"plain DSPy, hand-written module, {concurrency} threads", inproc_rates),
                  "worker / in-process throughput, 3-step pipeline")
    r.data.update({"worker_rps": worker_rates, "inprocess_rps": inproc_rates, "model": LISTED_MODEL,
                   "steps": steps, "concurrency": concurrency, "latency_ms": latency_ms, "calls_per_round": total,
                   "ideal_rps": concurrency / (steps * latency_ms / 1000)})
    r.notes.append(f"The model name is one DSPy's table lists ({LISTED_MODEL}), so neither side scans the table "
                   "on each call (the worker caches that lookup; scenario dspy_throughput shows what it is worth).")
    r.notes.append(f"Ideal: {concurrency} calls / ({steps} x {latency_ms} ms) = "
                   f"{concurrency / (steps * latency_ms / 1000):.0f} calls/s.")
    return r

