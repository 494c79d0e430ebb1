"""Scenario 9: a callback's round trip (worker -> client -> worker) against a plain ``echo``.

Measured with the Python client (``bridge.devtools.client.WorkerClient``) on one worker,
in alternating blocks:

* ``echo {"x": 1}``, as the client sees it (call to reply);
* ``call_back`` (the test backend tests/support/callback_backend.py): a request
  whose handler calls the client's callback once. Its handler times the
  callback, ``ctx.callback`` from call to return: the ``callback`` event out,
  the client's hand-off to a callback thread, its ``callback_result`` back, the
  handler woken. That round trip is the figure judged against echo's p50; the
  whole ``call_back`` request (two round trips) is shown beside it.

Client and worker are placed as every ping-type figure is (harness.placement).

The Elixir rows (benchmarks/elixir/callback.exs): the same through
``PortBridge.Worker``, the callback an Elixir function run in a task by the
Worker, BEAM and Python pinned to one CPU.
"""

from __future__ import annotations

import time

from .. import report
from ..harness import env, pct, placement, spread
from bridge.devtools.client import WorkerClient

ARGS = ("--backends", "", "--backend-module", "tests.support.callback_backend:backend")


def run(quick: bool) -> report.Result:
    rounds, n, blocks = (3, 300, 4) if quick else (5, 1000, 6)
    r = report.Result("callbacks", "a callback's round trip vs a plain echo, Python client (issue 11)")
    table = r.table(f"{rounds} workers x {blocks} alternating blocks of {n} requests; latency in us",
                    ["what", "p50: median [min-max]", "p99: median [min-max]", "/ echo p50: median [min-max]"])
    runs: dict[str, list] = {"echo": [], "callback": [], "request": []}
    with placement() as where:
        for _ in range(rounds):
            lat: dict[str, list] = {name: [] for name in runs}
            with WorkerClient(list(ARGS), env=env()) as w:
                def echo() -> None:
                    t0 = time.perf_counter_ns()
                    assert w.request("echo", {"x": 1})["success"]
                    lat["echo"].append(time.perf_counter_ns() - t0)

                def callback() -> None:
                    t0 = time.perf_counter_ns()
                    reply = w.request("call_back", {"name": "f", "args": {"x": 1}}, callbacks={"f": lambda a: a})
                    lat["request"].append(time.perf_counter_ns() - t0)
                    lat["callback"] += reply["result"]["elapsed_ns"]

                for fn in (echo, callback):  # warm-up: the client's callback thread exists from here on
                    fn()
                for key in lat:
                    lat[key].clear()
                for i in range(blocks):
                    for fn in (echo, callback)[:: 1 if i % 2 == 0 else -1]:
                        for _ in range(n):
                            fn()
                where.note(w.pid)
            for name in runs:
                runs[name].append({"p50": pct(lat[name], 0.5), "p99": pct(lat[name], 0.99)})
    ratios = {name: [x["p50"] / e["p50"] for x, e in zip(runs[name], runs["echo"])] for name in runs}
    rows = (("echo", "echo {x: 1} (client: call to reply)"),
            ("callback", "one callback's round trip (worker: ctx.callback call to return)"),
            ("request", "the call_back request with that callback (client: call to reply)"))
    for name, label in rows:
        p50 = spread(x["p50"] for x in runs[name])
        p99 = spread(x["p99"] for x in runs[name])
        cell = report.span(spread(ratios[name]), report.ratio) if name != "echo" else "1"
        table.add(label, report.span(p50, report.us), report.span(p99, report.us), cell)
    s = spread(ratios["callback"])
    r.target("callback round trip p50 vs echo p50, Python client", "< 2x", report.span(s, report.ratio),
             s["median"] < 2.0)
    r.notes.append(f"{where.describe()}.")
    r.data = {"runs": runs, "ratios": ratios, "placement": dict(where)}
    elixir_rows(r, quick)
    return r


def elixir_rows(r: report.Result, quick: bool) -> None:
    """The tool call's round trip through the Elixir client (issue 11's row)."""
    from .pool import HERE as BENCH, beam

    doc = beam("callback", pinned=True, script=BENCH / "elixir" / "callback.exs",
               n=300 if quick else 1000, rounds=2 if quick else 5)
    runs = doc["runs"]
    table = r.table(f"Elixir client (PortBridge.Worker): {len(runs)} workers x 4 alternating blocks; BEAM and "
                    "Python pinned to CPU 0; latency in us",
                    ["what", "p50: median [min-max]", "p99: median [min-max]", "/ echo p50: median [min-max]"])
    ratios = {k: [x[k]["p50"] / x["echo"]["p50"] for x in runs] for k in ("callback", "request")}
    for key, label in (("echo", "echo {x: 1} (caller: call to reply)"),
                       ("callback", "a tool call's round trip, worker -> Elixir -> worker (worker: ctx.callback)"),
                       ("request", "the call_back request with that tool call (caller: call to reply)")):
        cell = report.span(spread(ratios[key]), report.ratio) if key != "echo" else "1"
        table.add(label, report.span(spread(x[key]["p50"] for x in runs), report.us),
                  report.span(spread(x[key]["p99"] for x in runs), report.us), cell)
    s = spread(ratios["callback"])
    r.target("tool call round trip p50 vs echo p50, Elixir client", "< 2x", report.span(s, report.ratio),
             s["median"] < 2.0)
    r.data["elixir"] = doc
