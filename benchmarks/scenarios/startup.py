"""Scenario 3: spawn -> ``ready``, and spawn -> first completed DSPy command.

Baselines, spawned the same way in the same run: ``python -c pass`` (the
interpreter alone, spawn -> exit), ``python -c "import dspy"`` (what a first
DSPy command cannot avoid) and the floor (spawn -> its ready frame). The
worker is spawned as an Elixir Port would spawn it: ``python -m bridge
worker``, every installed backend (DSPy included) enabled, and also through
the ``portbridge`` console script.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import report
from ..harness import PYTHON, Peer, bare_startup_ns, floor_argv, spread, worker_argv
from .common import call, dspy_program, has_command, interleave

OFFLINE = {"model": "offline"}

PORTBRIDGE = str(Path(PYTHON).with_name("portbridge"))


def first_dspy_command_ns() -> int:
    """Spawn a worker; configure the offline LM, create and execute a program, each right after the other."""
    with Peer(worker_argv()) as peer:
        dspy_program(peer, OFFLINE)
        call(peer, "execute_program", {"program_id": "p", "inputs": {"question": "2 + 2?"}})
        return time.perf_counter_ns() - peer.spawned_ns


def ready_ns(argv: list[str]) -> int:
    with Peer(argv) as peer:
        return peer.ready_ns - peer.spawned_ns


def dspy_available() -> str | None:
    """Why the DSPy rows cannot run, or None if they can."""
    try:
        with Peer(worker_argv()) as peer:
            if has_command(peer, "execute_program"):
                return None
    except Exception as exc:  # noqa: BLE001
        return f"worker did not answer describe: {exc}"
    return "the worker has no execute_program command (DSPy backend missing)"


def run(quick: bool) -> report.Result:
    rounds = 3 if quick else 7
    r = report.Result("startup", "spawn -> ready, spawn -> first DSPy command (scenario 3)")
    rows = {
        "python -c pass (exit)": lambda: bare_startup_ns([PYTHON, "-c", "pass"]),
        "floor (ready)": lambda: ready_ns(floor_argv()),
        "python -m bridge worker (ready)": lambda: ready_ns(worker_argv()),
        "portbridge worker (ready)": lambda: ready_ns([PORTBRIDGE, "worker"]),
    }
    missing = dspy_available()
    if not quick:
        rows["python -c 'import dspy' (exit)"] = lambda: bare_startup_ns([PYTHON, "-c", "import dspy"])
        if missing is None:
            rows["worker: first execute_program done"] = first_dspy_command_ns
    if missing:
        r.notes.append(f"spawn -> first DSPy command not measured: {missing}.")
    elif quick:
        r.notes.append("the DSPy rows run in the full run only (each costs an `import dspy`).")
    runs = interleave(list(rows), rounds, lambda name: rows[name]())
    base = runs["python -c pass (exit)"]
    table = r.table(f"{rounds} repeats, interleaved; milliseconds from spawn",
                    ["what", "ms: median [min-max]", "/ python -c pass: median [min-max]"])
    for name, values in runs.items():
        ratios = [v / b for v, b in zip(values, base)]
        table.add(name, report.span(spread(values), report.ms), report.span(spread(ratios), report.ratio))
    r.data["runs_ns"] = runs
    ready = spread(runs["python -m bridge worker (ready)"])
    r.target("spawn -> ready", "<= 120 ms", report.span(ready, report.ms) + " ms", ready["median"] <= 120e6)
    r.notes.append(f"python: {PYTHON} (the venv's; the real interpreter, not a pyenv shim), cwd the checkout, "
                   f"{os.cpu_count()} CPUs.")
    return r
