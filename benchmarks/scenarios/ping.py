"""Scenarios 1 and 2: ping round trips, one at a time and pipelined, against the floor.

Each repeat spawns a fresh floor and a fresh worker (alternating which goes
first), warms both up, then measures the same pre-encoded frames through the
same client code. A ratio is taken between the two peers of one repeat and the
spread of those ratios is reported, so that a noisy neighbour moves both sides
of a ratio together. Client and peers are pinned to one CPU (``harness.placement``;
``--unpinned`` records where the kernel put them instead).
"""

from __future__ import annotations

import threading
import time

from .. import report
from ..harness import Peer, Placement, decode, floor_argv, frame, pct, placement, spread, worker_argv
from .common import interleave, worker_settled

PEERS = {"floor": floor_argv, "worker": lambda: worker_argv("--backends", "")}


def on_fresh_peer(name: str, measure, where: Placement):
    """``measure(peer)`` on a freshly spawned peer (a worker once its backends settled); ``where``
    notes where it ran."""
    with Peer(PEERS[name]()) as peer:
        if name == "worker":
            worker_settled(peer)
        result = measure(peer)
        where.note(peer.pid)
        return result


def ping_frames(n: int, fmt: str, start: int = 1) -> list[bytes]:
    return [frame({"id": i, "command": "ping"}, fmt) for i in range(start, start + n)]


def check_pong(payload: bytes) -> None:
    doc = decode(payload)
    if not (doc.get("success") and doc["result"].get("pong")):
        raise RuntimeError(f"not a pong: {doc!r}")


def sequential(peer: Peer, frames: list[bytes], warmup: int) -> list[int]:
    send, recv, clock = peer.send, peer.recv, time.perf_counter_ns
    for f in frames[:warmup]:
        send(f)
        recv()
    lat = []
    last = b""
    for f in frames[warmup:]:
        t0 = clock()
        send(f)
        last = recv()
        lat.append(clock() - t0)
    check_pong(last)
    return lat


def pipelined(peer: Peer, frames: list[bytes], warmup: int) -> float:
    """Requests per second with every frame in flight at once (a writer thread, this thread reads)."""
    peer.send(b"".join(frames[:warmup]))
    peer.recv_into_count(warmup)
    data = b"".join(frames[warmup:])
    n = len(frames) - warmup
    t0 = time.perf_counter_ns()
    writer = threading.Thread(target=peer.send, args=(data,))
    writer.start()
    last = peer.recv_into_count(n)
    elapsed = time.perf_counter_ns() - t0
    writer.join()
    check_pong(last)
    return n / (elapsed / 1e9)


def run_sequential(quick: bool) -> report.Result:
    rounds, n, warmup = (3, 1000, 200) if quick else (7, 3000, 300)
    r = report.Result("ping", "ping round trip, one request at a time (scenario 1)")
    table = r.table(
        f"{rounds} repeats x {n} sequential pings; each repeat a fresh process; latency in us",
        ["format", "peer", "p50: median [min-max]", "p99: median [min-max]", "p50 / floor p50: median [min-max]"])
    for fmt in ("json", "msgpack"):
        frames = ping_frames(n + warmup, fmt)

        def measure(name: str) -> dict:
            lat = on_fresh_peer(name, lambda peer: sequential(peer, frames, warmup), where)
            return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}

        with placement() as where:
            runs = interleave(list(PEERS), rounds, measure)
        ratios = [w["p50"] / f["p50"] for w, f in zip(runs["worker"], runs["floor"])]
        for name in PEERS:
            p50 = spread(x["p50"] for x in runs[name])
            p99 = spread(x["p99"] for x in runs[name])
            cell = report.span(spread(ratios), report.ratio) if name == "worker" else "1"
            table.add(fmt, name, report.span(p50, report.us), report.span(p99, report.us), cell)
        s = spread(ratios)
        goal = "<= 1.3x floor, pinned" if where["pinned"] else "<= 1.3x floor (pinned; this run: unpinned)"
        r.target(f"ping p50, {fmt}", goal, report.span(s, report.ratio),
                 s["median"] <= 1.3 if where["pinned"] else None)
        r.data[fmt] = {"runs": runs, "ratios": ratios, "placement": dict(where)}
        r.notes.append(f"{fmt}: {where.describe()}.")
    r.notes.append("floor: benchmarks/floor.py (read, decode, encode, one write); worker: "
                   "`python -m bridge worker --backends ''` (the core; scenario 8 measures a worker with DSPy).")
    r.notes.append("Latency is the client's time from the first byte written to the last byte of the reply read "
                   "(os.write + os.read, no decoding), the same code for both peers.")
    return r


def run_pipelined(quick: bool) -> report.Result:
    rounds, n, warmup = (3, 10000, 1000) if quick else (7, 30000, 2000)
    r = report.Result("pipelined", "pipelined ping throughput, every request in flight (scenario 2)")
    table = r.table(f"{rounds} repeats x {n} pings written at once; requests per second",
                    ["format", "peer", "req/s: median [min-max]", "worker / floor: median [min-max]"])
    for fmt in ("json", "msgpack"):
        frames = ping_frames(n + warmup, fmt)

        with placement() as where:
            runs = interleave(list(PEERS), rounds, lambda name: on_fresh_peer(
                name, lambda peer: pipelined(peer, frames, warmup), where))
        ratios = [w / f for w, f in zip(runs["worker"], runs["floor"])]
        for name in PEERS:
            cell = report.span(spread(ratios), report.ratio) if name == "worker" else "1"
            table.add(fmt, name, report.span(spread(runs[name]), lambda v: f"{v:,.0f}"), cell)
        s = spread(ratios)
        goal = ">= 1.0x floor, pinned" if where["pinned"] else ">= 1.0x floor (pinned; this run: unpinned)"
        r.target(f"pipelined req/s, {fmt}", goal, report.span(s, report.ratio),
                 s["median"] >= 1.0 if where["pinned"] else None)
        r.data[fmt] = {"runs": runs, "ratios": ratios, "placement": dict(where)}
        r.notes.append(f"{fmt}: {where.describe()}.")
    return r
