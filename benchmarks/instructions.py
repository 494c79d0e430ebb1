"""Instructions per request in the worker, counted by callgrind: a figure a shared machine cannot blur.

    python -m benchmarks.instructions                       # ping and echo, 500 and 5,500 requests
    python -m benchmarks.instructions --command echo --count 5000

Wall-clock latencies on a 2-CPU machine shared by other work swing by tens of
per cent; the user-space instructions the worker executes per request do not.
The worker (``python -m bridge worker --backends ''``, the core alone) runs
under ``valgrind --tool=callgrind`` twice, once answering ``--base`` sequential
requests and once ``--base + --count``; the difference of the two totals over
``--count`` is the cost of one request, with start-up and exit cancelled out.
Every thread that serves requests counts (the reading thread, handler threads),
so a scheduled ``echo`` includes its hand-off to a handler thread. The timer
thread does not: these requests have no deadline, and what it does (the parent
and session checks, a few times a second) grows with the run's wall time, which
a loaded machine stretches; ``--all-threads`` counts it too.

Not part of ``python -m benchmarks`` (it needs valgrind and takes a minute per
figure); its figures go in commit messages when the hot path changes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
HEADER_BYTES = 4
REQUESTS = {
    "ping": {"command": "ping"},
    "echo": {"command": "echo", "args": {"x": 1}},
}


def _frame(doc: dict) -> bytes:
    payload = orjson.dumps(doc)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def _recv(fd: int, buf: bytearray) -> bytes:
    """The next frame's payload from ``fd`` (``buf`` keeps what was read past it)."""
    while True:
        if len(buf) >= HEADER_BYTES:
            n = int.from_bytes(buf[:HEADER_BYTES], "big")
            if len(buf) >= HEADER_BYTES + n:
                payload = bytes(buf[HEADER_BYTES:HEADER_BYTES + n])
                del buf[:HEADER_BYTES + n]
                return payload
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise RuntimeError("the worker closed its stdout")
        buf += chunk


def total_instructions(command: str, requests: int, python: str, all_threads: bool = False) -> int:
    """Callgrind's total of instructions for one worker answering ``requests`` sequential ``command``s."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
                python, "-m", "bridge", "worker", "--backends", ""]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, cwd=str(ROOT), env=env, bufsize=0)
        assert process.stdin is not None and process.stdout is not None
        wfd, rfd, buf = process.stdin.fileno(), process.stdout.fileno(), bytearray()
        ready = orjson.loads(_recv(rfd, buf))
        if ready.get("event") != "ready":
            raise RuntimeError(f"first frame is not ready: {ready!r}")
        request = REQUESTS[command]
        for i in range(requests):
            os.write(wfd, _frame({"id": i, **request}))
            reply = orjson.loads(_recv(rfd, buf))
            if not reply.get("success"):
                raise RuntimeError(f"request {i} failed: {reply!r}")
        process.stdin.close()
        if process.wait(300) != 0:
            raise RuntimeError(f"the worker exited with {process.returncode}")
        return sum(_thread_total(path.read_text(), all_threads) for path in Path(tmp).glob("callgrind.out-*"))


def _thread_total(text: str, all_threads: bool) -> int:
    """One thread's instructions; 0 for the timer thread unless ``all_threads`` (the only thread of the
    worker that waits with a timeout on a Python lock: sem_clockwait, under its Condition's wait)."""
    if not all_threads and "sem_clockwait" in text:
        return 0
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("no total in callgrind's output")
    return int(found.group(1))


def per_request(command: str, base: int, count: int, python: str, all_threads: bool = False) -> float:
    low = total_instructions(command, base, python, all_threads)
    high = total_instructions(command, base + count, python, all_threads)
    return (high - low) / count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    p.add_argument("--command", choices=sorted(REQUESTS), action="append",
                   help="the request to count (repeatable; default: every one)")
    p.add_argument("--count", type=int, default=5000, help="requests whose cost is measured (default %(default)s)")
    p.add_argument("--base", type=int, default=500,
                   help="requests of the shorter run, which cancels start-up and exit (default %(default)s)")
    p.add_argument("--python", default=sys.executable, help="the worker's interpreter (default: this one)")
    p.add_argument("--all-threads", action="store_true", help="count the timer thread too")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    for command in args.command or sorted(REQUESTS):
        cost = per_request(command, args.base, args.count, args.python, args.all_threads)
        threads = "every thread" if args.all_threads else "the timer thread excluded"
        print(f"{command}: {cost:,.0f} instructions per request (callgrind, {args.base} vs "
              f"{args.base + args.count} sequential requests, {threads})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
