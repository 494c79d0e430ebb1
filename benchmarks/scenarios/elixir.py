"""Scenario 7: the Elixir client. Ping round trips through ``PortBridge.Worker`` and
``PortBridge.Pool`` against a raw ``Port`` with the same frames (to the worker and to
the floor), pool throughput with 1, 4 and 16 callers, and the Python driver of
scenario 1 measured around it in the same run.

The BEAM side is benchmarks/elixir/roundtrip.exs, run with ``mix run`` inside
elixir_client (compiled into benchmarks/.elixir_build, offline: no Hex). The Pool
rows are the default (multiplexed) strategy; scenario "pool" compares strategies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from .. import report
from ..harness import HERE, PYTHON, ROOT, Peer, pct, placement, spread, worker_argv
from .ping import ping_frames, sequential

CLIENT = ROOT / "elixir_client"
SCRIPT = HERE / "elixir" / "roundtrip.exs"
BUILD = HERE / ".elixir_build"


def python_driver_p50(n: int, rounds: int) -> list[float]:
    frames = ping_frames(n + n // 5, "json")
    out = []
    for _ in range(rounds):
        with Peer(worker_argv("--backends", "")) as peer:
            out.append(pct(sequential(peer, frames, n // 5), 0.5))
    return out


def run(quick: bool) -> report.Result:
    n, rounds, calls = (1000, 2, 2000) if quick else (3000, 5, 8000)
    r = report.Result("elixir", "Elixir client: PortBridge.Worker and Pool vs a raw Port (scenario 7)")
    mix = shutil.which("mix")
    if mix is None or not (CLIENT / "mix.exs").exists():
        r.error = "mix or elixir_client/ not found"
        return r
    env = dict(os.environ, BENCH_PYTHON=PYTHON, BENCH_ROOT=str(ROOT), BENCH_FLOOR=str(HERE / "floor.py"),
               BENCH_N=str(n), BENCH_ROUNDS=str(rounds), BENCH_CALLS=str(calls), MIX_BUILD_PATH=str(BUILD),
               MIX_ENV="prod")
    env.setdefault("MIX_EXS", "mix.offline.exs")  # no Hex here: the offline project file
    with placement() as where:  # the BEAM and its Ports, and the Python driver, placed alike
        before = python_driver_p50(n, max(1, rounds // 2))
        proc = subprocess.run([mix, "run", str(SCRIPT)], cwd=str(CLIENT), env=env, capture_output=True,
                              text=True, timeout=600)
        after = python_driver_p50(n, max(1, rounds - rounds // 2))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        r.error = f"mix run exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}"
        return r
    doc = json.loads(lines[-1])
    py = before + after
    py_p50 = spread(py)
    table = r.table(f"{rounds} repeats x {n} sequential pings (JSON); each repeat a fresh Port; latency in us",
                    ["client -> peer", "p50: median [min-max]", "p99: median [min-max]", "p50 / raw Port -> worker"])
    raw_worker = spread(x["p50"] for x in doc["latency"]["raw Port -> worker"])["median"]
    for name, runs in doc["latency"].items():
        p50 = spread(x["p50"] for x in runs)
        p99 = spread(x["p99"] for x in runs)
        table.add(name, report.span(p50, report.us), report.span(p99, report.us),
                  report.ratio(p50["median"] / raw_worker))
    table.add("Python driver (benchmarks harness) -> worker", report.span(py_p50, report.us), "",
              report.ratio(py_p50["median"] / raw_worker))
    worker = spread(x["p50"] for x in doc["latency"]["PortBridge.Worker"])
    raw_ratio = worker["median"] / raw_worker
    r.target("PortBridge.Worker p50 vs a raw Port to the same worker, pinned (issue 22)", "<= 1.5x",
             f"{raw_ratio:.2f}x ({worker['median'] / 1000:.1f} us vs {raw_worker / 1000:.1f} us)", raw_ratio <= 1.5)
    ratio = worker["median"] / py_p50["median"]
    r.target("PortBridge.Worker p50 vs Python-driver p50", "<= 2x",
             f"{ratio:.2f}x ({worker['median'] / 1000:.1f} us vs {py_p50['median'] / 1000:.1f} us)", ratio <= 2.0)
    hot = doc.get("hotpath")
    if hot:
        t = r.table(f"Where a ping's BEAM work goes ({hot['n']} pings; counts, not times: the machine's "
                    "load does not change them)", ["path", "reductions: caller", "reductions: Worker",
                                                    "function calls"])
        w, raw = hot["worker"], hot["raw"]
        t.add("PortBridge.Worker.request/4", f"{w['caller_reductions']:.0f}", f"{w['worker_reductions']:.0f}",
              f"{w['calls']['total']:.0f}")
        t.add("raw Port (encode, Port.command, receive, decode)", f"{raw['caller_reductions']:.0f}", "",
              f"{raw['calls']['total']:.0f}")
        top = [row for row in hot["eprof"] if row["percent"] > 0][-12:][::-1]
        p = r.table(":eprof of the Worker path (caller and Worker), own time, top 12 (profiled, so slower "
                    "than unprofiled)", ["function", "calls/ping", "% of time", "us/ping"])
        for row in top:
            p.add(row["function"], f"{row['calls_per_ping']:.1f}", f"{row['percent']:.1f}",
                  f"{row['us_per_ping']:.2f}")
    if doc["throughput"]:
        t = r.table(f"PortBridge.Pool of {doc['schedulers']} workers: pings per second", ["callers", "requests", "req/s"])
        for row in doc["throughput"]:
            t.add(row["callers"], row["requests"], f"{row['per_s']:,.0f}")
    else:
        r.notes.append("PortBridge.Pool rows not measured: the client has no PortBridge.Pool.")
    r.notes.append(f"Erlang/OTP {doc['otp']}, Elixir {doc['elixir']}, {doc['schedulers']} schedulers; JSON through "
                   "jiffy on the BEAM side. The Python driver is measured before and after the BEAM run.")
    r.notes.append(f"Placement: {where.describe().replace('client and peer', 'the BEAM, the Python driver and every peer')}.")
    r.data = {"beam": doc, "python_driver_p50_ns": py, "placement": dict(where)}
    return r
