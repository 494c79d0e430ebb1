"""Scenario "rate_limit" (issue 21): rate limits the Elixir client enforces for every Python.

Two parts, each a ``mix run`` of benchmarks/elixir/rate_limit.exs in elixir_client:

- overhead: what admission adds to an LM call under the limit. ``execute_program``
  on one ``PortBridge.Worker`` with the offline LM (no HTTP, so the bridge is all
  that is measured), sequentially: a phase per limited session, in which blocks of
  50 calls take turns between it and a session without ``rate_limit`` (so that a
  slow moment of the machine falls on both alike). The limited sessions have a
  ``rate_limit`` they never reach; ``PortBridge.Limiter`` answers the
  ``portbridge.admit`` callback and, well under the limit, leases the worker the
  next calls' starts (protocol 1.3): most calls start without asking. Under
  ``requests_per_minute`` a successful call reports nothing; under
  ``tokens_per_minute`` what a call did not use of its estimate goes back with the
  next admission (``returned_tokens``), and a call that used more sends an
  ``lm_call`` event at once. A third session answers its admissions with a function of
  the request's own (no lease): a callback round trip per call. BEAM and Python
  pinned to one CPU. Target: the mean difference (per LM call, asks included) at
  most 50 us, for each kind of limit; the p50 is a call that started on a lease.
- limit: the issue's scenario. A pool of two Pythons, 36 calls at once
  (``DSPy.map``) against the loopback provider (benchmarks/lm_server.py), which lets
  10 chat completions a second start and answers the others 429 with a Retry-After,
  counting them. With the pool told the limit (``rate_limit: [requests_per_minute:
  600]``) and, as the baseline, without (each Python on its own, DSPy's retries).
  Targets: with the limit, throughput at least 0.9x the limit and no 429.
"""

from __future__ import annotations

from .. import report
from ..harness import HERE, spread
from .lm import LMServer
from .pool import beam

SCRIPT = HERE / "elixir" / "rate_limit.exs"
LIMIT = 10  # calls a second the provider allows
CALLS = 36


def run(quick: bool) -> report.Result:
    r = report.Result("rate_limit", "rate limits the Elixir client enforces for every Python (issue 21)")
    n, rounds = (300, 2) if quick else (1000, 5)

    doc = beam("overhead", pinned=True, script=SCRIPT, n=n, rounds=rounds)
    runs = doc["runs"]
    t = r.table(f"admission under the limit: execute_program on one Worker, offline LM, {rounds} rounds; a phase "
                f"per limited side: {n} calls of it and {n} without rate_limit, in blocks of 50 taking turns; "
                "BEAM and Python pinned to CPU 0; us",
                ["LM", "p50: median [min-max]", "mean: median [min-max]", "p99: median [min-max]",
                 "added p50: median [min-max]", "added mean: median [min-max]", "admissions asked per call"])
    sides = (("limited", "requests_per_minute never reached: PortBridge.Limiter, leases"),
             ("tokens", "tokens_per_minute never reached: PortBridge.Limiter, leases, unused tokens returned"),
             ("callback", "requests_per_minute, admitted by the request's own callback (no limiter, no lease)"))

    def cells(key: str, base: bool) -> list[str]:
        def of(x: dict) -> dict:
            return x[key]["free"] if base else x[key]
        return [report.span(spread(of(x)[q] for x in runs), report.us) for q in ("p50", "mean", "p99")]

    def added(key: str, q: str) -> dict:
        return spread(x[key][q] - x[key]["free"][q] for x in runs)

    for key, label in sides:
        t.add(f"no rate_limit (the {key} phase)", *cells(key, True), "", "", "0")
        # The callback side's admissions are answered by the request's own function: one per call.
        asked = "1" if key == "callback" else f"{sum(x[key]['asked'] for x in runs) / (n * len(runs)):.3f}"
        t.add(label, *cells(key, False), report.span(added(key, "p50"), report.us),
              report.span(added(key, "mean"), report.us), asked)
    for key, label in (("limited", "requests_per_minute"), ("tokens", "tokens_per_minute")):
        d = added(key, "mean")
        r.target(f"admission added to an LM call under the limit (mean per call, {label})", "<= 50 us",
                 report.span(d, report.us), d["median"] <= 50_000)

    with LMServer(0, "--rate-limit", str(LIMIT), "--rate-window-s", "1") as server:
        doc = beam("limit", pinned=False, script=SCRIPT, lm_url=server.url, limit=LIMIT, calls=CALLS,
                   rounds=1 if quick else 3)
    limited = [x for x in doc["runs"] if x["limited"]]
    free = [x for x in doc["runs"] if not x["limited"]]
    t = r.table(f"at the limit: a pool of 2 Pythons, {CALLS} calls at once, the provider allows {LIMIT} a second "
                f"(sliding window); {len(limited)} run(s) each",
                ["pool", "calls/s: median [min-max]", "/ limit", "served", "provider 429s"])

    def rate(x: dict) -> float:
        return x["served"] / (x["wall_ns"] / 1e9)

    for rows, label in ((limited, f"rate_limit: [requests_per_minute: {LIMIT * 60}]"),
                        (free, "no rate_limit (each Python retries its own 429s)")):
        s = spread(rate(x) for x in rows)
        t.add(label, report.span(s, lambda v: f"{v:.2f}"), report.ratio(s["median"] / LIMIT),
              "/".join(str(x["served"]) for x in rows) + f" of {CALLS}",
              "/".join(str(x["provider"]["responses_429"]) for x in rows))
    s = spread(rate(x) for x in limited)
    r.target("throughput at the limit, two Pythons, 36 calls", ">= 0.9x the limit",
             report.ratio(s["median"] / LIMIT), s["min"] >= 0.9 * LIMIT)
    sent = sum(x["provider"]["responses_429"] for x in limited)
    r.target("provider 429s at the limit", "0", str(sent), sent == 0)
    r.data = {"overhead": runs, "limit": doc}
    return r
