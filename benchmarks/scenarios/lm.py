"""Scenarios 5 and 6: LM-bound concurrency in one worker, and the bridge's overhead on a real program.

Both drive the DSPy program ``Predict("question -> answer")`` through
``execute_program``, with the loopback OpenAI-compatible server
(tests/support/openai_server.py, run as a child that stops by itself) or the
built-in ``offline`` LM.

5. N concurrent ``execute_program`` calls in ONE worker, against N worker
   processes with one call each, the server answering after a fixed 200 ms.
   Wall time from the first request written to the last reply read; RSS of
   the one worker, and the sum over the N workers.
6. ``execute_program`` through frames against the same program called in a
   plain Python process (benchmarks/inprocess_dspy.py), same LM, measured in
   interleaved rounds; the overhead is the difference of the medians.
7. Throughput at 32 concurrent calls, the server answering after 50 ms, with a
   model name DSPy's metadata table does not list (self-hosted, fine-tunes):
   one worker against plain DSPy in 32 threads of one process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time

from bridge.processes import kill_process

from .. import report
from ..harness import PYTHON, ROOT, Peer, decode, env, rss_bytes, spread, worker_argv
from .common import dspy_program, execute_frame, has_command, worker_settled

LATENCY_MS = 200
MB = 1 << 20


class LMServer:
    """benchmarks/lm_server.py as a child process (``options``: more of its options); ``url`` is its base URL."""

    def __init__(self, latency_ms: float, *options: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.lm_server", "--latency-ms", str(latency_ms), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env(), cwd=str(ROOT))
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the loopback LM server did not start: {line!r}")
        self.url = line.split()[-1]

    def lm(self, model: str = "openai/bench") -> dict:
        return {"model": model, "api_base": self.url, "api_key": "bench-key", "num_retries": 0}

    def close(self) -> None:
        self.process.stdin.close()  # the server stops when its stdin closes
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        kill_process(self.process)

    def __enter__(self) -> "LMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def dspy_worker(lm: dict, *args: str) -> Peer:
    peer = Peer(worker_argv(*args))
    try:
        worker_settled(peer, backends=True)
        if not has_command(peer, "execute_program"):
            raise RuntimeError("the worker has no execute_program command (DSPy backend missing)")
        dspy_program(peer, lm)
    except BaseException:
        peer.kill()
        raise
    return peer


def check_replies(payloads: list[bytes]) -> None:
    for p in payloads:
        doc = decode(p)
        if not doc.get("success"):
            raise RuntimeError(f"execute_program failed: {doc.get('error')}")


def burst(peer: Peer, n: int, first_id: int) -> int:
    """N execute_program requests written at once; nanoseconds until the N-th reply."""
    data = b"".join(execute_frame(first_id + i) for i in range(n))
    t0 = time.perf_counter_ns()
    peer.send(data)
    replies = [peer.recv() for _ in range(n)]
    elapsed = time.perf_counter_ns() - t0
    check_replies(replies)
    return elapsed


def one_call_each(peers: list[Peer], first_id: int) -> int:
    """One execute_program to each worker at once; nanoseconds until the last reply."""
    replies: list = [None] * len(peers)

    def wait(i: int) -> None:
        replies[i] = peers[i].recv()

    frames = [execute_frame(first_id + i) for i in range(len(peers))]
    readers = [threading.Thread(target=wait, args=(i,)) for i in range(len(peers))]
    t0 = time.perf_counter_ns()
    for peer, f in zip(peers, frames):
        peer.send(f)
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    elapsed = time.perf_counter_ns() - t0
    check_replies(replies)
    return elapsed


def run_concurrency(quick: bool) -> report.Result:
    ns_one = [1, 32] if quick else [1, 2, 4, 8, 16, 32, 64]
    ns_many = [2] if quick else [1, 4, 16]
    reps = 2 if quick else 3
    r = report.Result("lm_concurrency", f"N concurrent LM calls ({LATENCY_MS} ms loopback server): "
                                        "one worker vs N workers (scenario 5)")
    table = r.table(f"{reps} repeats; wall time from the first request written to the last reply, ms",
                    ["N", "one worker: ms", "one worker / N=1", "one worker RSS MiB",
                     "N workers: ms", "N workers: spawn+setup s", "N workers: total RSS MiB"])
    with LMServer(LATENCY_MS) as server:
        rows: dict[int, dict] = {}
        peer = dspy_worker(server.lm())
        try:
            burst(peer, 1, 1)  # warm: the first call builds DSPy's adapters and the HTTP client
            rid = 100
            for n in ns_one:
                times = []
                for _ in range(reps):
                    times.append(burst(peer, n, rid))
                    rid += n
                rows[n] = {"one": times, "one_rss": rss_bytes(peer.pid)}
        finally:
            peer.close()
        for n in ns_many:
            t0 = time.monotonic()
            peers = []
            try:
                for _ in range(n):  # one after another: n imports of DSPy at once would only thrash
                    peers.append(dspy_worker(server.lm()))
                setup = time.monotonic() - t0
                one_call_each(peers, 1)  # warm each
                times = [one_call_each(peers, 10 + i * n) for i in range(reps)]
                rss = sum(rss_bytes(p.pid) for p in peers)
            finally:
                for p in peers:
                    p.close()
            rows.setdefault(n, {}).update({"many": times, "many_setup_s": setup, "many_rss": rss})
    base = statistics.median(rows[1]["one"])
    for n in sorted(rows):
        row = rows[n]
        one = spread(row["one"]) if "one" in row else None
        many = spread(row["many"]) if "many" in row else None
        table.add(n,
                  report.span(one, report.ms) if one else "",
                  report.ratio(one["median"] / base) if one else "",
                  f"{row['one_rss'] / MB:.0f}" if "one_rss" in row else "",
                  report.span(many, report.ms) if many else "",
                  f"{row['many_setup_s']:.1f}" if many else "",
                  f"{row['many_rss'] / MB:.0f}" if many else "")
    r.data["rows"] = rows
    if 32 in rows:
        ratios = [t / base for t in rows[32]["one"]]
        s = spread(ratios)
        r.target("32 concurrent calls in one worker vs one call", "<= 1.5x", report.span(s, report.ratio),
                 s["median"] <= 1.5)
    r.notes.append("One worker runs with the default --max-concurrency 32: N=64 waits for a free thread "
                   "(two waves of 200 ms).")
    r.notes.append(f"N workers: measured for N in {ns_many} only (each worker imports DSPy: ~1-2 s of CPU and "
                   "~100+ MiB); spawned one after another, then one call each at once.")
    return r


def in_process_child(module: str = "benchmarks.inprocess_dspy"):
    """benchmarks/inprocess_dspy.py (or another such ``module``) as a child, and ``ask(instruction) -> its JSON
    answer``."""
    child = subprocess.Popen([PYTHON, "-m", module], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env(), cwd=str(ROOT), text=True)

    def ask(instruction: str):
        child.stdin.write(instruction + "\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if not line:
            raise RuntimeError("the in-process DSPy child exited")
        return json.loads(line)

    return child, ask


def run_overhead(quick: bool) -> report.Result:
    rounds, per_round = (3, 20) if quick else (5, 60)
    r = report.Result("overhead", "execute_program through frames vs the same program in-process (scenario 6)")
    table = r.table(f"{rounds} interleaved rounds x {per_round} sequential calls; milliseconds per call",
                    ["LM", "in-process: median [min-max] of round medians", "worker: median [min-max]",
                     "overhead us: median [min-max]"])
    inproc, in_process = in_process_child()

    try:
        with LMServer(0) as server:
            for name, lm, instruction in (("offline", {"model": "offline"}, "offline"),
                                          ("loopback HTTP (0 ms)", server.lm(), f"loopback {server.url}")):
                peer = dspy_worker(lm)
                try:
                    rid = 1
                    for _ in range(3):  # warm both sides
                        burst(peer, 1, rid)
                        rid += 1
                    in_process(f"{instruction} 3")
                    w_med, i_med, diffs = [], [], []
                    for k in range(rounds):
                        def worker_round() -> None:
                            nonlocal rid
                            times = []
                            for _ in range(per_round):
                                times.append(burst(peer, 1, rid))
                                rid += 1
                            w_med.append(statistics.median(times))

                        def inproc_round() -> None:
                            i_med.append(statistics.median(in_process(f"{instruction} {per_round}")))

                        for step in ((worker_round, inproc_round) if k % 2 == 0 else (inproc_round, worker_round)):
                            step()
                        diffs.append(w_med[-1] - i_med[-1])
                finally:
                    peer.close()
                d = spread(diffs)
                table.add(name, report.span(spread(i_med), lambda v: f"{v / 1e6:.2f}"),
                          report.span(spread(w_med), lambda v: f"{v / 1e6:.2f}"), report.span(d, report.us))
                r.data[name] = {"worker_medians_ns": w_med, "inprocess_medians_ns": i_med, "overhead_ns": diffs}
                # A spread of differences that crosses zero is noise, not an overhead: no verdict.
                within_noise = d["min"] < 0 < d["max"]
                r.target(f"execute_program overhead, {name}", "<= 300 us",
                         report.span(d, report.us) + " us" + (" (within noise)" if within_noise else ""),
                         None if within_noise else d["median"] <= 300e3)
    finally:
        inproc.stdin.close()
        inproc.wait(10)
    r.notes.append("In-process: dspy.Predict('question -> answer') under the settings the worker uses "
                   "(ChatAdapter, no history, usage tracked), in its own process (benchmarks/inprocess_dspy.py).")
    return r


UNLISTED_MODEL = "openai/acme-support-ft-7b"  # not in DSPy's model-metadata table


def sustained(peer: Peer, concurrency: int, total: int, first_id: int, program_id: str = "p") -> int:
    """``total`` execute_program calls, ``concurrency`` in flight at all times; nanoseconds for all of them."""
    sent = received = 0
    t0 = time.perf_counter_ns()
    peer.send(b"".join(execute_frame(first_id + i, program_id) for i in range(concurrency)))
    sent = concurrency
    while received < total:
        check_replies([peer.recv()])
        received += 1
        if sent < total:
            peer.send(execute_frame(first_id + sent, program_id))
            sent += 1
    return time.perf_counter_ns() - t0


def compare_rates(r: report.Result, table, worker: tuple[str, list], inproc: tuple[str, list], target: str) -> None:
    """The two sides' calls per second as rows of ``table`` (round by round: interleaved rounds), and the
    target that the worker serves at least as many as plain DSPy in one process."""
    for label, rates in (worker, inproc):
        table.add(label, report.span(spread(rates), lambda v: f"{v:.0f}"))
    ratios = spread([a / b for a, b in zip(worker[1], inproc[1])])
    r.target(target, ">= 1.0x", report.span(ratios, report.ratio), ratios["median"] >= 1.0)


def run_throughput(quick: bool) -> report.Result:
    concurrency, latency_ms = 32, 50
    total, rounds = (160, 2) if quick else (640, 3)
    r = report.Result("dspy_throughput", f"execute_program throughput, {concurrency} concurrent, {latency_ms} ms "
                                         "LM, model name not in DSPy's table: worker vs plain in-process DSPy "
                                         "in threads (scenario 7)")
    table = r.table(f"{rounds} interleaved rounds of {total} calls; calls per second",
                    ["side", "req/s: median [min-max]"])
    inproc, in_process = in_process_child()

    worker_rates, inproc_rates = [], []
    try:
        with LMServer(latency_ms) as server:
            peer = dspy_worker(server.lm(UNLISTED_MODEL))
            try:
                rid = 1
                sustained(peer, concurrency, concurrency, rid)  # warm
                rid += concurrency
                in_process(f"threads {server.url} {UNLISTED_MODEL} {concurrency} {concurrency}")
                for k in range(rounds):
                    def worker_round() -> None:
                        nonlocal rid
                        worker_rates.append(total / (sustained(peer, concurrency, total, rid) / 1e9))
                        rid += total

                    def inproc_round() -> None:
                        ns = in_process(f"threads {server.url} {UNLISTED_MODEL} {concurrency} {total}")
                        inproc_rates.append(total / (ns / 1e9))

                    for step in ((worker_round, inproc_round) if k % 2 == 0 else (inproc_round, worker_round)):
                        step()
            finally:
                peer.close()
    finally:
        inproc.stdin.close()
        inproc.wait(10)
    compare_rates(r, table, ("one worker (frames)", worker_rates),
                  ("plain DSPy, 32 threads in one process", inproc_rates), "worker / in-process throughput")
    r.data.update({"worker_rps": worker_rates, "inprocess_rps": inproc_rates, "model": UNLISTED_MODEL,
                   "concurrency": concurrency, "latency_ms": latency_ms, "calls_per_round": total})
    r.notes.append("The worker caches DSPy's model-metadata lookup (bridge/backends/dspy/patches.py); plain DSPy "
                   "scans its whole table on every call for a model name it does not list.")
    return r
