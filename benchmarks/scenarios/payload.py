"""Scenario 4: payload throughput through ``echo``, against a raw pipe copy of the same bytes.

One request carries one payload of N bytes (``args.data``): bytes (MessagePack
``bin``) or an ASCII string (MessagePack ``str``, JSON string), and the reply
carries it back. Throughput is N / round-trip time: the payload crosses the
pipe twice, is decoded once and encoded once per round trip. Baselines, with
the same frames and the same client: ``cat`` (a raw pipe copy: the request
frame comes back as it went, no decoding) and the floor (decode + encode in
Python, no checks).
"""

from __future__ import annotations

import statistics

from .. import report
from ..harness import Peer, cat_argv, floor_argv, frame, spread, worker_argv
from .common import interleave, worker_settled

MiB = 1 << 20
KINDS = (("bytes", "msgpack"), ("str", "msgpack"), ("str", "json"))
PEERS = {
    "raw pipe (cat)": (cat_argv, False),
    "floor": (floor_argv, True),
    # 64 MiB of data plus the envelope is above the default 64 MiB frame limit.
    "worker": (lambda: worker_argv("--backends", "", "--max-frame-bytes", str(80 * MiB)), True),
}


def request(size: int, kind: str, fmt: str) -> bytes:
    data = b"\x5a" * size if kind == "bytes" else "Z" * size
    return frame({"id": 1, "command": "echo", "args": {"data": data}}, fmt)


def roundtrips(peer: Peer, data: bytes, size: int, budget_s: float, max_reps: int) -> list[int]:
    """Round trips of one frame until the time budget or ``max_reps`` is spent (at least 3)."""
    peer.roundtrip(data)  # warm-up: the first large round trip pays for fresh memory on both sides
    times = []
    spent = 0
    while len(times) < 3 or (spent < budget_s * 1e9 and len(times) < max_reps):
        elapsed, reply = peer.roundtrip(data)
        if len(reply) < size:
            raise RuntimeError(f"{peer.argv[:4]} answered {len(reply)} bytes to a {size}-byte payload")
        times.append(elapsed)
        spent += elapsed
    return times


def run(quick: bool) -> report.Result:
    sizes = [1 << 10, MiB, 16 * MiB] if quick else [1 << 10, 64 << 10, MiB, 16 * MiB, 64 * MiB]
    rounds = 2 if quick else 3
    budget = 0.1 if quick else 0.25
    r = report.Result("payload", "payload throughput through echo (scenario 4)")
    table = r.table(
        f"{rounds} repeats per peer; each repeat the median of several round trips; "
        "throughput = payload bytes / round-trip time, GB/s (10^9 bytes)",
        ["payload", "kind", "format", "raw pipe (cat)", "floor", "worker", "worker / raw pipe", "worker / floor"])
    for kind, fmt in KINDS:
        for size in sizes:
            if kind != "bytes" and size > (MiB if quick else 16 * MiB):
                continue  # the largest size once (bytes) keeps the run short
            data = request(size, kind, fmt)

            def measure(name: str) -> float:
                argv, ready = PEERS[name]
                with Peer(argv(), ready=ready) as peer:
                    if name == "worker":
                        worker_settled(peer)
                    times = roundtrips(peer, data, size, budget, 2000)
                return size / statistics.median(times)  # bytes per ns = GB/s

            # The raw pipe copies frames verbatim: it is the same for every kind and format.
            names = list(PEERS) if (kind, fmt) == KINDS[0] else ["floor", "worker"]
            runs = interleave(names, rounds, measure)
            if "raw pipe (cat)" in runs:
                r.data.setdefault("raw", {})[size] = runs["raw pipe (cat)"]
            raw = r.data["raw"][size]
            w, f = runs["worker"], runs["floor"]
            vs_raw = [x / y for x, y in zip(w, raw)]
            vs_floor = [x / y for x, y in zip(w, f)]
            gbs = lambda v: f"{v:.2f}"  # noqa: E731
            table.add(report.size(size), kind, fmt, report.span(spread(raw), gbs), report.span(spread(f), gbs),
                      report.span(spread(w), gbs), report.span(spread(vs_raw), report.ratio),
                      report.span(spread(vs_floor), report.ratio))
            r.data.setdefault(f"{kind}/{fmt}", {})[size] = runs
            if (kind, fmt, size) == ("bytes", "msgpack", 16 * MiB):
                s = spread(w)
                r.target("16 MiB bytes through msgpack echo", ">= 1 GB/s", report.span(s, gbs) + " GB/s",
                         s["median"] >= 1.0)
    r.notes.append("cat answers the request frame itself (no decode, no envelope): the cost of the pipes and of "
                   "the client alone. The floor decodes and encodes but checks nothing.")
    r.notes.append("The worker runs with --max-frame-bytes 80 MiB so that 64 MiB of data plus its envelope fits.")
    return r
