"""Scenario "cluster" (issue 13): PortBridge.Cluster on 1, 2 and 3 BEAM nodes of this machine.

Two parts, each a ``mix run`` of benchmarks/elixir/cluster.exs in elixir_client,
the nodes started there with OTP's ``:peer``, each with its own Python worker:

- LM-bound throughput: 64 sessions, each a caller running ``execute_program`` again
  and again against the loopback LM server (200 ms a call); every node's Python runs
  at most CONCURRENCY calls at once (``--max-concurrency``), so that the nodes, not
  the 2 CPUs, bound the throughput. Callers are spread over the nodes, so most
  requests start on a node that does not own their session. Completed calls per
  second with 1, 2 and 3 nodes; target: each added node adds >= 0.9x of one node.
- remote call overhead: sequential pings from one node of two, through its pool
  directly, through the cluster for a session that node owns, and for a session the
  other node owns; everything pinned to one CPU (``taskset -c 0``). The overhead of
  a remote call is the difference of the p50s.
"""

from __future__ import annotations

import os
import shutil

from .. import report
from ..harness import HERE, spread
from .lm import LATENCY_MS, LMServer
from .pool import beam

SCRIPT = HERE / "elixir" / "cluster.exs"
SESSIONS = 64
CONCURRENCY = 4


def run(quick: bool) -> report.Result:
    r = report.Result("cluster", "PortBridge.Cluster on 1, 2 and 3 local nodes (issue 13)")
    if shutil.which("mix") is None:
        r.error = "mix not found"
        return r
    seconds = 4 if quick else 8
    n, rounds = (1000, 2) if quick else (3000, 5)

    with LMServer(LATENCY_MS) as server:
        lm = beam("lm", pinned=False, script=SCRIPT, lm_url=server.url, sessions=SESSIONS, seconds=seconds,
                  concurrency=CONCURRENCY, nodes="1,2,3")
    rows = lm["result"]
    one = rows["1"]["per_second"]
    bound = CONCURRENCY * 1000 / LATENCY_MS
    t = r.table(f"LM-bound: {SESSIONS} sessions calling execute_program in a loop for {seconds} s, LM answers "
                f"after {LATENCY_MS} ms, each node's Python runs {CONCURRENCY} calls at once "
                f"(bound: {bound:.0f} calls/s per node)",
                ["nodes", "calls/s", "vs 1 node", "per node vs 1 node", "failed", "sessions per node"])
    for k in sorted(rows, key=int):
        row = rows[k]
        per_node = row["per_second"] / (int(k) * one)
        t.add(k, f"{row['per_second']:,.1f}", report.ratio(row["per_second"] / one), report.ratio(per_node),
              row["failed"], ", ".join(str(c) for c in sorted(row["sessions_per_node"].values())))
    for k in ("2", "3"):
        per_node = rows[k]["per_second"] / (int(k) * one)
        r.target(f"throughput with {k} nodes per node vs 1 node", ">= 0.9x", f"{per_node:.2f}x", per_node >= 0.9)

    ping = beam("ping", pinned=True, script=SCRIPT, n=n, rounds=rounds)
    lat = ping["result"]
    local_label = "Cluster, session owned by the caller's node"
    remote_label = "Cluster, session owned by the other node"
    pool_p50 = spread(x["p50"] for x in lat["Pool on the node (no cluster)"])["median"]
    t = r.table(f"ping: {rounds} repeats x {n} sequential pings from one node of two, all pinned to CPU 0; us",
                ["target", "p50: median [min-max]", "p99: median [min-max]", "p50 - pool's"])
    for name, runs in lat.items():
        p50 = spread(x["p50"] for x in runs)
        t.add(name, report.span(p50, report.us), report.span(spread(x["p99"] for x in runs), report.us),
              report.us(p50["median"] - pool_p50))
    local = spread(x["p50"] for x in lat[local_label])["median"]
    remote = spread(x["p50"] for x in lat[remote_label])["median"]
    r.notes.append(f"A remote call costs {(remote - local) / 1000:,.0f} us more than a local one at p50 "
                   f"({remote / 1000:,.0f} us vs {local / 1000:,.0f} us): the request and its reply each cross "
                   "the loopback TCP connection between the two BEAMs, handed over by the sending node's "
                   "courier process; no other process is in the way.")
    r.notes.append(f"Erlang/OTP {ping['otp']}, Elixir {ping['elixir']}. The LM part runs unpinned on "
                   f"{os.cpu_count()} CPUs; the callers are spread round-robin over the nodes, this node only "
                   "drives; the loopback LM server is one process for all nodes.")
    r.data = {"lm": lm, "ping": ping}
    return r
