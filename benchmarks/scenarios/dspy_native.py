"""Scenario "dspy_native": what a program module's ``run/3`` (issue 20: a signature
module's struct, inputs checked, outputs cast) costs in BEAM CPU over a plain
``PortBridge.DSPy.execute_program/4`` of the same program, in the same run.

The BEAM side is benchmarks/elixir/dspy_native.exs (``mix run`` inside elixir_client,
compiled into benchmarks/.elixir_build, offline). Two parts, each in alternating
blocks of the two variants: against the real worker and its offline LM (what a call
costs the BEAM whole: caller, Worker, Port, JSON both ways), and against a
``PortBridge.Test`` stub that answers the same reply (the client's own work alone,
without the noise of Python on the same machine). BEAM CPU is the BEAM process's CPU
time per call (``:erlang.statistics(:runtime)``), schedulers not busy-waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from .. import report
from ..harness import HERE, PYTHON, ROOT, placement, spread

CLIENT = ROOT / "elixir_client"
SCRIPT = HERE / "elixir" / "dspy_native.exs"
BUILD = HERE / ".elixir_build"
LIMIT_US = 10.0  # issue 20: run/3 costs at most this much BEAM CPU over execute_program
PLAIN, NATIVE = "DSPy.execute_program/4", "TriageProgram.run/3"


def run(quick: bool) -> report.Result:
    n, stub_n, blocks = (150, 3000, 4) if quick else (500, 20000, 8)
    r = report.Result("dspy_native", "Elixir-native DSPy: a program module's run/3 vs DSPy.execute_program/4 (issue 20)")
    mix = shutil.which("mix")
    if mix is None or not (CLIENT / "mix.exs").exists():
        r.error = "mix or elixir_client/ not found"
        return r
    env = dict(os.environ, BENCH_PYTHON=PYTHON, BENCH_ROOT=str(ROOT), BENCH_N=str(n), BENCH_STUB_N=str(stub_n),
               BENCH_BLOCKS=str(blocks), MIX_BUILD_PATH=str(BUILD), MIX_ENV="prod",
               ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none")
    env.setdefault("MIX_EXS", "mix.offline.exs")
    with placement() as where:
        proc = subprocess.run([mix, "run", str(SCRIPT)], cwd=str(CLIENT), env=env, capture_output=True, text=True,
                              timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        r.error = f"mix run exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}"
        return r
    doc = json.loads(lines[-1])
    for part, what, calls in (("worker", "the real worker, offline LM", n), ("stub", "a PortBridge.Test stub", stub_n)):
        rows = doc[part]
        table = r.table(f"{what}: {blocks} alternating blocks of {calls} calls each; BEAM CPU us per call "
                        "(median [min-max] of the blocks), latency us",
                        ["variant", "BEAM CPU per call", "mean", "p50", "p99"])
        for name in (PLAIN, NATIVE):
            row = rows[name]
            table.add(name, report.span(spread(row["cpu_us_per_call"]), lambda v: f"{v:.1f}"),
                      f"{row['cpu_us_per_call_mean']:.1f}", report.us(row["latency"]["p50"]),
                      report.us(row["latency"]["p99"]))
        extra = rows[NATIVE]["cpu_us_per_call_mean"] - rows[PLAIN]["cpu_us_per_call_mean"]
        r.target(f"run/3 BEAM CPU over execute_program/4 ({what})", f"<= {LIMIT_US:.0f} us",
                 f"{extra:+.1f} us per call (means of the blocks)", extra <= LIMIT_US)
    r.notes.append(f"Erlang/OTP {doc['otp']}, Elixir {doc['elixir']}, {doc['schedulers']} schedulers; "
                   "+sbwt none (no busy-waiting counted as CPU).")
    r.notes.append(f"Placement: {where.describe().replace('client and peer', 'the BEAM and the worker')}.")
    r.data = {"beam": doc, "placement": dict(where)}
    return r
