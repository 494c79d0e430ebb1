"""Counters and latency percentiles for the ``stats`` command.

Latencies are kept per command in a fixed ring of the most recent samples, so
memory stays flat however long the worker lives and percentiles describe
recent behaviour.

Counting happens in two tallies: ``inline``, touched only by the reading
thread (input frames, control replies, rejected requests), with no lock, since
those replies are the latency every client sees; and the shared one, under a
lock, for replies written by handler threads. ``snapshot`` runs on the reading
thread (``stats`` is a control command) and adds the two.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

RING = 2048
NO_COMMAND = "(none)"  # counts the replies to frames that never became a request
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class _PerCommand:
    __slots__ = ("count", "ring")

    def __init__(self) -> None:
        self.count = 0
        self.ring: deque[int] = deque(maxlen=RING)


class Tally:
    """Counts of one group of threads (the caller serialises access)."""

    __slots__ = ("commands", "errors", "events", "frames_in", "bytes_in", "frames_out", "bytes_out")

    def __init__(self) -> None:
        self.commands: dict[str, _PerCommand] = {}
        self.errors: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0

    def frame_in(self, size: int) -> None:
        self.frames_in += 1
        self.bytes_in += size

    def frame_out(self, size: int) -> None:
        self.frames_out += 1
        self.bytes_out += size

    def event(self, name: str, size: int) -> None:
        self.frames_out += 1
        self.bytes_out += size
        self.events[name] = self.events.get(name, 0) + 1

    def new_command(self, command: str) -> _PerCommand:
        entry = self.commands[command] = _PerCommand()
        return entry

    def reply(self, command: str, elapsed_us: int, category: str | None, size: int) -> None:
        """A final reply of ``size`` bytes (``command``: NO_COMMAND for a frame that never became a request)."""
        self.frames_out += 1
        self.bytes_out += size
        entry = self.commands.get(command)
        if entry is None:
            entry = self.new_command(command)
        entry.count += 1
        entry.ring.append(elapsed_us)
        if category is not None:
            self.errors[category] = self.errors.get(category, 0) + 1


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self._started_mono = time.monotonic()
        self.inline = Tally()  # the reading thread's, without a lock
        self._shared = Tally()
        self._lock = threading.Lock()

    def frame_out(self, size: int) -> None:
        with self._lock:
            self._shared.frame_out(size)

    def event(self, name: str, size: int) -> None:
        with self._lock:
            self._shared.event(name, size)

    def reply(self, command: str, elapsed_us: int, category: str | None, size: int) -> None:
        with self._lock:
            self._shared.reply(command, elapsed_us, category, size)

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_mono

    def snapshot(self) -> dict:
        """Both tallies added up (call it on the reading thread: the inline tally is then still)."""
        a = self.inline
        with self._lock:
            b = self._shared
            requests = _add({k: v.count for k, v in a.commands.items()}, {k: v.count for k, v in b.commands.items()})
            rings = {k: list(v.ring) for k, v in a.commands.items()}
            for k, v in b.commands.items():
                rings[k] = rings.get(k, []) + list(v.ring)
            errors, events = _add(a.errors, b.errors), _add(a.events, b.events)
            frames = {"in": a.frames_in + b.frames_in, "out": a.frames_out + b.frames_out,
                      "bytes_in": a.bytes_in + b.bytes_in, "bytes_out": a.bytes_out + b.bytes_out}
        latency = {}
        for command, ring in rings.items():
            values = sorted(ring)
            latency[command] = {
                "samples": len(values),
                "p50_us": percentile(values, 0.50),
                "p90_us": percentile(values, 0.90),
                "p99_us": percentile(values, 0.99),
                "max_us": values[-1] if values else 0,
            }
        return {
            "requests": requests,
            "requests_total": sum(requests.values()),
            "errors": errors,
            "events": events,
            "frames": frames,
            "latency": latency,
            "uptime_s": round(self.uptime_s(), 3),
            "rss_bytes": rss_bytes(),
        }


def _add(a: dict, b: dict) -> dict:
    total = dict(a)
    for key, value in b.items():
        total[key] = total.get(key, 0) + value
    return total
