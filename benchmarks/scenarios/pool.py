"""Scenario "pool" (issue 10): PortBridge.Pool's strategies against one PortBridge.Worker.

Three parts, each a ``mix run`` of benchmarks/elixir/pool.exs in elixir_client:

- ping: sequential pings through a raw Port, a Worker, and pools of 2 in both
  strategies, client and workers pinned to one CPU (``taskset -c 0``; on 2 vCPUs the
  placement alone moves a ping's p50 five-fold), interleaved rounds;
- LM-bound: 32 and 128 sessions each run one ``execute_program`` at once, the
  loopback LM server answering after 200 ms; wall time per target (unpinned);
- CPU-bound: 32 requests at once of a handler that computes for 20 ms
  (benchmarks/cpu_backend.py); wall time per target (unpinned).

The exclusive rows need NimblePool (``NIMBLE_POOL_PATH`` naming a checkout, or Hex).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from .. import report
from ..harness import HERE, PYTHON, ROOT, spread
from .lm import LATENCY_MS, LMServer

CLIENT = ROOT / "elixir_client"
SCRIPT = HERE / "elixir" / "pool.exs"
BUILD = HERE / ".elixir_build"
POOL_SIZE = 2


def beam(part: str, pinned: bool, script=SCRIPT, erl_options: str | None = None, **settings) -> dict:
    """``mix run`` of a BEAM-side benchmark script (pool.exs by default); its last JSON line.
    ``erl_options``: flags for the BEAM itself (ELIXIR_ERL_OPTIONS)."""
    mix = shutil.which("mix")
    env = dict(os.environ, BENCH_PYTHON=PYTHON, BENCH_ROOT=str(ROOT), BENCH_PART=part,
               BENCH_POOL_SIZE=str(POOL_SIZE), MIX_BUILD_PATH=str(BUILD), MIX_ENV="prod",
               **{f"BENCH_{k.upper()}": str(v) for k, v in settings.items()})
    if erl_options:
        env["ELIXIR_ERL_OPTIONS"] = erl_options
    env.setdefault("MIX_EXS", "mix.offline.exs")  # no Hex here: the offline project file
    argv = [mix, "run", str(script)]
    if pinned and shutil.which("taskset"):
        argv = ["taskset", "-c", "0"] + argv
    proc = subprocess.run(argv, cwd=str(CLIENT), env=env, capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mix run ({part}) exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}")
    return json.loads(lines[-1])


def run(quick: bool) -> report.Result:
    r = report.Result("pool", "PortBridge.Pool strategies vs one PortBridge.Worker (issue 10)")
    if shutil.which("mix") is None:
        r.error = "mix not found"
        return r
    n, rounds = (1000, 2) if quick else (3000, 5)
    sessions = [32] if quick else [32, 128]
    cpu_reqs = 16 if quick else 32

    ping = beam("ping", pinned=True, n=n, rounds=rounds)
    lat = ping["result"]
    worker_p50 = spread(x["p50"] for x in lat["Worker"])["median"]
    t = r.table(f"ping: {rounds} repeats x {n} sequential pings, client and workers pinned to CPU 0; us",
                ["target", "p50: median [min-max]", "p99: median [min-max]", "p50 / Worker"])
    for name, runs in lat.items():
        p50 = spread(x["p50"] for x in runs)
        t.add(name, report.span(p50, report.us), report.span(spread(x["p99"] for x in runs), report.us),
              report.ratio(p50["median"] / worker_p50))
    mux = spread(x["p50"] for x in lat["Pool multiplexed"])["median"]
    r.target("multiplexed pool ping p50 vs Worker", "<= 1.1x", f"{mux / worker_p50:.2f}x", mux / worker_p50 <= 1.1)

    with LMServer(LATENCY_MS) as server:
        lm = beam("lm", pinned=False, lm_url=server.url, sessions=",".join(map(str, sessions)))["result"]
    t = r.table(f"LM-bound: N sessions, one execute_program each at once, LM answers after {LATENCY_MS} ms; "
                f"pools of {POOL_SIZE}; wall ms (failed)", ["target"] + [f"{s} sessions" for s in sessions])
    for name, runs in lm.items():
        t.add(name, *(f"{runs[str(s)]['wall_ns'] / 1e6:,.0f} ({runs[str(s)]['failed']})" for s in sessions))
    for s in sessions:
        ratio = lm["Pool multiplexed"][str(s)]["wall_ns"] / lm["Worker"][str(s)]["wall_ns"]
        r.target(f"multiplexed pool wall time vs Worker, {s} sessions", "<= 1.5x", f"{ratio:.2f}x", ratio <= 1.5)

    cpu = beam("cpu", pinned=False, cpu_reqs=cpu_reqs)["result"]
    one = cpu["Worker"]["wall_ns"]
    t = r.table(f"CPU-bound: {cpu_reqs} requests at once of a 20 ms computation; pools of {POOL_SIZE}",
                ["target", "wall ms", "req/s", "speed-up vs one Python"])
    for name, row in cpu.items():
        t.add(name, f"{row['wall_ns'] / 1e6:,.0f}", f"{row['requests'] / (row['wall_ns'] / 1e9):,.1f}",
              report.ratio(one / row["wall_ns"]))
    if "Pool exclusive" in cpu:
        speedup = one / cpu["Pool exclusive"]["wall_ns"]
        r.target("exclusive pool of 2, CPU-bound, vs one Python", "close to 2x (>= 1.7x)", f"{speedup:.2f}x",
                 speedup >= 1.7)
    else:
        r.notes.append("Exclusive rows not measured: this build has no NimblePool (NIMBLE_POOL_PATH).")
    r.notes.append(f"Erlang/OTP {ping['otp']}, Elixir {ping['elixir']}; ping pinned with taskset -c 0 (client, "
                   "its Port programs and the Pythons on one CPU); the LM and CPU parts unpinned on "
                   f"{os.cpu_count()} CPUs.")
    r.data = {"ping": ping, "lm": lm, "cpu": cpu}
    return r
