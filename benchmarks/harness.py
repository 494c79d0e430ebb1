"""The client side every scenario shares: spawn a framed peer, send frames, time replies.

``Peer`` drives any process that speaks 4-byte length-prefixed frames on its
stdin/stdout (``portbridge worker``, the floor, ``cat``) with the same few
system calls, so that what differs between two measurements is the peer and
nothing else. It does not decode replies while timing; callers check a sample
afterwards (``decode``).

Also here: the commands of the peers, spread statistics, RSS, machine facts.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bridge import codecs
from bridge.devtools.client import worker_command
from bridge.processes import kill_process
from bridge.framing import HEADER, encode_frame

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
READ_BYTES = 1 << 20
# The CPU that ping-type figures pin the client and its peers to (run.py: --cpu N), or None
# (--unpinned) to let the kernel place them and record where it did. Unpinned, a ratio between
# two peers measures CPU placement as much as code (measured: a ping p50 of 17 us with client and
# peer on one vCPU, 86 us across two).
PIN_CPU: int | None = 0


def last_cpu(pid: int) -> int | None:
    """The CPU ``pid`` last ran on (field 39 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def placement():
    """Pin this thread (the client) to PIN_CPU for the block: the peers it spawns inherit it. Yields
    the placement record (``pinned``, ``cpus``; ``seen``: a list to which ``Placement.note`` adds
    where client and peer last ran, the record of unpinned runs)."""
    before = os.sched_getaffinity(0)
    if PIN_CPU is not None:
        os.sched_setaffinity(0, {PIN_CPU})
    record = Placement(PIN_CPU is not None, sorted(os.sched_getaffinity(0)))
    try:
        yield record
    finally:
        os.sched_setaffinity(0, before)


class Placement(dict):
    """Where a block's processes ran: {"pinned", "cpus", "seen": [[client_cpu, peer_cpu], ...]}."""

    def __init__(self, pinned: bool, cpus: list[int]) -> None:
        super().__init__(pinned=pinned, cpus=cpus, seen=[])

    def note(self, peer_pid: int) -> None:
        self["seen"].append([last_cpu(os.getpid()), last_cpu(peer_pid)])

    def describe(self) -> str:
        if self["pinned"]:
            return f"client and peer pinned to CPU {self['cpus'][0]} (sched_setaffinity, as taskset -c)"
        pairs = {tuple(p) for p in self["seen"]}
        return (f"unpinned over CPUs {self['cpus']}: (client, peer) last ran on "
                f"{', '.join(str(p) for p in sorted(pairs, key=str))}")


def env(**extra: str) -> dict:
    """The environment of a spawned peer: this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def worker_argv(*args: str) -> list[str]:
    return worker_command(args, PYTHON)


def floor_argv() -> list[str]:
    return [PYTHON, str(HERE / "floor.py")]


def cat_argv() -> list[str]:
    return ["cat"]


# -- frames -------------------------------------------------------------------------

def encode(doc, fmt: str) -> bytes:
    return codecs.get(fmt).encode(doc)


def decode(payload: bytes):
    return codecs.detect(payload).decode(payload)


def frame(doc, fmt: str) -> bytes:
    return encode_frame(encode(doc, fmt))


class PeerError(RuntimeError):
    pass


class Peer:
    """One framed child process. ``send`` writes bytes; ``recv`` returns the next payload."""

    def __init__(self, argv: list[str], *, ready: bool = True, extra_env: dict | None = None,
                 timeout: float = 60.0) -> None:
        self.argv = argv
        self.spawned_ns = time.perf_counter_ns()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env(**(extra_env or {})), cwd=str(ROOT), bufsize=0)
        self.wfd = self.process.stdin.fileno()
        self.rfd = self.process.stdout.fileno()
        self._buf = bytearray()
        self._chunk = bytearray(READ_BYTES)
        self._chunk_view = memoryview(self._chunk)
        self.ready = None
        self.ready_ns = None
        if ready:
            self.ready = decode(self.recv())
            self.ready_ns = time.perf_counter_ns()
            if self.ready.get("event") != "ready":
                raise PeerError(f"{argv}: first frame is not ready: {self.ready!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def _fill(self, need: int) -> None:
        buf = self._buf
        while len(buf) < need:
            n = os.readv(self.rfd, [self._chunk])
            if not n:
                raise PeerError(f"{self.argv[:4]} closed its stdout (exit {self.process.poll()})")
            buf += self._chunk_view[:n]

    def recv(self):
        """The next payload (bytes; a bytearray above 1 MiB, read straight into place)."""
        self._fill(4)
        (n,) = HEADER.unpack_from(self._buf)
        if n > READ_BYTES:
            return self._recv_big(n)
        self._fill(4 + n)
        payload = bytes(self._buf[4:4 + n])
        del self._buf[:4 + n]
        return payload

    def _recv_big(self, n: int) -> bytearray:
        payload = bytearray(n)
        have = min(len(self._buf) - 4, n)
        payload[:have] = self._buf[4:4 + have]
        del self._buf[:4 + have]
        view = memoryview(payload)
        while have < n:
            got = os.readv(self.rfd, [view[have:]])
            if not got:
                raise PeerError(f"{self.argv[:4]} closed its stdout inside a frame")
            have += got
        return payload

    def recv_into_count(self, frames: int) -> bytes:
        """Read ``frames`` whole frames without decoding them; returns the last payload."""
        buf = self._buf
        unpack = HEADER.unpack_from
        pos = 0
        last = b""
        while frames:
            if len(buf) - pos < 4:
                del buf[:pos]
                pos = 0
                self._fill(4)
                continue
            (n,) = unpack(buf, pos)
            if len(buf) - pos < 4 + n:
                del buf[:pos]
                pos = 0
                self._fill(4 + n)
                continue
            if frames == 1:
                last = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            frames -= 1
        del buf[:pos]
        return last

    def roundtrip(self, data: bytes) -> tuple[int, bytes]:
        """One request frame -> (nanoseconds, reply payload). Above what a pipe holds, a thread
        writes while this one reads (a peer such as cat answers before it has read everything)."""
        t0 = time.perf_counter_ns()
        if len(data) <= 32768:
            self.send(data)
            reply = self.recv()
            return time.perf_counter_ns() - t0, reply
        writer = threading.Thread(target=self.send, args=(data,))
        writer.start()
        reply = self.recv()
        elapsed = time.perf_counter_ns() - t0
        writer.join()
        return elapsed, reply

    def close(self, timeout: float = 15.0) -> int | None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        kill_process(self.process)
        return self.process.returncode

    def kill(self) -> None:
        kill_process(self.process)

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.kill()


# -- numbers ------------------------------------------------------------------------

def pct(values, q: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def spread(values) -> dict:
    """min / median / max of repeated measurements (one value per repeat)."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise PeerError(f"no VmRSS for pid {pid}")


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "orjson": v("orjson"),
        "msgpack": v("msgpack"),
        "dspy": v("dspy"),
        "loadavg_at_start": os.getloadavg(),
    }


def bare_startup_ns(argv: list[str]) -> int:
    """Spawn -> exit of a command (the baseline of start-up scenarios)."""
    t0 = time.perf_counter_ns()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env(), cwd=str(ROOT), check=True)
    return time.perf_counter_ns() - t0
