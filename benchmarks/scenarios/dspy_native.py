"""Scenario "dspy_native": what a program module's ``run/3`` (issue 20: a signature
module's struct, inputs checked, outputs cast) costs in BEAM CPU over a plain
``PortBridge.DSPy.execute_program/4`` of the same program, in the same run.

The BEAM side is benchmarks/elixir/dspy_native.exs (``mix run`` inside elixir_client,
compiled into benchmarks/.elixir_build, offline; ``pool.beam``). Two parts, each in alternating
blocks of the two variants: against the real worker and its offline LM (what a call
costs the BEAM whole: caller, Worker, Port, JSON both ways), and against a
``PortBridge.Test`` stub that answers the same reply (the client's own work alone,
without the noise of Python on the same machine). BEAM CPU is the BEAM process's CPU
time per call (``:erlang.statistics(:runtime)``), schedulers not busy-waiting; beside it the
reductions of every BEAM process per call, an exact count of the BEAM's work that no
other process on a busy machine disturbs.
"""

from __future__ import annotations

import shutil

from .. import report
from ..harness import HERE, spread
from .pool import beam

SCRIPT = HERE / "elixir" / "dspy_native.exs"
LIMIT_US = 10.0  # issue 20: run/3 costs at most this much BEAM CPU over execute_program
PLAIN, NATIVE = "DSPy.execute_program/4", "TriageProgram.run/3"
NO_BUSY_WAIT = "+sbwt none +sbwtdcpu none +sbwtdio none"  # idle spinning is not work


def run(quick: bool) -> report.Result:
    n, stub_n, blocks = (150, 3000, 4) if quick else (500, 20000, 8)
    r = report.Result("dspy_native", "Elixir-native DSPy: a program module's run/3 vs DSPy.execute_program/4 (issue 20)")
    if shutil.which("mix") is None:
        r.error = "mix not found"
        return r
    try:
        doc = beam("dspy_native", pinned=True, script=SCRIPT, erl_options=NO_BUSY_WAIT, n=n, stub_n=stub_n,
                   blocks=blocks)
    except RuntimeError as exc:
        r.error = str(exc)
        return r
    for part, what, calls in (("worker", "the real worker, offline LM", n), ("stub", "a PortBridge.Test stub", stub_n)):
        rows = doc[part]
        table = r.table(f"{what}: {blocks} alternating blocks of {calls} calls each; BEAM CPU us per call "
                        "(median [min-max] of the blocks), latency us",
                        ["variant", "BEAM CPU per call", "mean", "reductions per call", "p50", "p99"])
        for name in (PLAIN, NATIVE):
            row = rows[name]
            table.add(name, report.span(spread(row["cpu_us_per_call"]), lambda v: f"{v:.1f}"),
                      f"{row['cpu_us_per_call_mean']:.1f}", f"{row['reductions_per_call']:.0f}",
                      report.us(row["latency"]["p50"]), report.us(row["latency"]["p99"]))
        extra = rows[NATIVE]["cpu_us_per_call_mean"] - rows[PLAIN]["cpu_us_per_call_mean"]
        r.target(f"run/3 BEAM CPU over execute_program/4 ({what})", f"<= {LIMIT_US:.0f} us",
                 f"{extra:+.1f} us per call (means of the blocks)", extra <= LIMIT_US)
    r.notes.append(f"Erlang/OTP {doc['otp']}, Elixir {doc['elixir']}, {doc['schedulers']} schedulers; "
                   "+sbwt none (no busy-waiting counted as CPU).")
    r.notes.append("The BEAM and the worker pinned to CPU 0 (taskset -c 0).")
    r.data = {"beam": doc}
    return r
