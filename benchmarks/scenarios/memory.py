"""Scenario 8: resident memory of a worker idle, with DSPy loaded, and after 10,000 requests.

RSS is VmRSS from /proc. Baselines: a bare interpreter waiting on stdin and
the floor. Growth is measured after a warm-up (the first requests fill caches,
start the pool's threads and the allocator's arenas) up to 10,000 requests
later; "no growth beyond noise" is read as at most 2 MiB (or 2 %) more.
"""

from __future__ import annotations

import time

from .. import report
from ..harness import PYTHON, Peer, floor_argv, frame, rss_bytes, worker_argv
from .common import call, dspy_program, execute_frame, worker_settled
from .startup import dspy_available

MB = 1 << 20
GROWTH_LIMIT = 2 * MB


def settle_rss(pid: int, wait_s: float = 0.3) -> int:
    time.sleep(wait_s)
    return rss_bytes(pid)


def drive(peer: Peer, frames: list[bytes], batch: int = 100) -> None:
    """Send the frames in pipelined batches and read every reply."""
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        peer.send(b"".join(chunk))
        peer.recv_into_count(len(chunk))


def core_requests(n: int, start: int) -> list[bytes]:
    """A mix of ping, echo (1 KiB, both formats), stats and sleep 0."""
    out = []
    blob = "x" * 1024
    for i in range(start, start + n):
        kind = i % 5
        if kind == 0:
            out.append(frame({"id": i, "command": "ping"}, "json"))
        elif kind == 1:
            out.append(frame({"id": i, "command": "echo", "args": {"s": blob, "i": i}}, "json"))
        elif kind == 2:
            out.append(frame({"id": i, "command": "echo", "args": {"b": blob.encode(), "i": i}}, "msgpack"))
        elif kind == 3:
            out.append(frame({"id": i, "command": "sleep", "args": {"ms": 0}, "session_id": f"s{i % 7}"}, "json"))
        else:
            out.append(frame({"id": i, "command": "stats"}, "msgpack"))
    return out


def dspy_requests(n: int, start: int) -> list[bytes]:
    return [execute_frame(i) for i in range(start, start + n)]


def growth(peer: Peer, make, warmup: int, n: int) -> tuple[int, int]:
    drive(peer, make(warmup, 1))
    before = settle_rss(peer.pid)
    drive(peer, make(n, warmup + 1))
    return before, settle_rss(peer.pid)


def run(quick: bool) -> report.Result:
    n = 2000 if quick else 10000
    r = report.Result("memory", "resident memory: idle, with DSPy, after many requests (scenario 8)")
    table = r.table("RSS in MiB (VmRSS)", ["process", "state", "RSS MiB"])
    mib = lambda b: f"{b / MB:.1f}"  # noqa: E731
    with Peer([PYTHON, "-c", "import sys; sys.stdin.buffer.read()"], ready=False) as peer:
        table.add("python (bare interpreter)", "idle", mib(settle_rss(peer.pid)))
    with Peer(floor_argv()) as peer:
        table.add("floor", "idle", mib(settle_rss(peer.pid)))
    with Peer(worker_argv("--backends", "")) as peer:
        idle = settle_rss(peer.pid)
        table.add("worker --backends ''", "idle", mib(idle))
        before, after = growth(peer, core_requests, 1000, n)
        table.add("worker --backends ''", "after 1,000 requests (warm-up)", mib(before))
        table.add("worker --backends ''", f"after {n:,} more (ping, echo, sleep, stats)", mib(after))
    r.data["core"] = {"idle": idle, "warm": before, "after": after, "requests": n}
    d = after - before
    r.target(f"core worker RSS growth over {n:,} requests", "<= 2 MiB",
             f"{d / MB:+.2f} MiB ({d / before:+.1%})", d <= max(GROWTH_LIMIT, 0.02 * before))

    with Peer(worker_argv()) as peer:
        table.add("worker (all backends)", "idle, just after ready", mib(settle_rss(peer.pid, 0.05)))
        worker_settled(peer, backends=True)
        table.add("worker (all backends)", "backends settled (DSPy imported)", mib(settle_rss(peer.pid)))
    missing = dspy_available()
    if missing:
        r.notes.append(f"DSPy rows not measured: {missing}.")
        return r
    with Peer(worker_argv()) as peer:
        dspy_program(peer, {"model": "offline"})
        call(peer, "execute_program", {"program_id": "p", "inputs": {"question": "warm?"}})
        loaded = settle_rss(peer.pid)
        table.add("worker (all backends)", "DSPy loaded, one program run (offline LM)", mib(loaded))
        m = n // 5 if quick else n
        t0 = time.monotonic()
        before, after = growth(peer, dspy_requests, 500, m)
        seconds = time.monotonic() - t0
        table.add("worker (all backends)", "after 500 execute_program (warm-up)", mib(before))
        table.add("worker (all backends)", f"after {m:,} more execute_program", mib(after))
    r.data["dspy"] = {"loaded": loaded, "warm": before, "after": after, "requests": m, "seconds": seconds}
    d = after - before
    r.target(f"DSPy worker RSS growth over {m:,} execute_program", "<= 2 MiB",
             f"{d / MB:+.2f} MiB ({d / before:+.1%})", d <= max(GROWTH_LIMIT, 0.02 * before))
    return r
