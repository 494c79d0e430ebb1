"""Counters and latency percentiles for the ``stats`` command.

Latencies are kept per command in a fixed ring of the most recent samples, so
memory stays flat however long the worker lives and percentiles describe
recent behaviour.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque

RING = 2048
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


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._lock = threading.Lock()
        self.requests = Counter()  # command -> final replies sent
        self.errors = Counter()  # category -> error replies sent
        self.events = Counter()  # event name -> events sent
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self._latency: dict[str, deque] = {}  # command -> the last RING latencies

    def frame_in(self, size: int) -> None:
        self.frames_in += 1
        self.bytes_in += size

    def frame_out(self, size: int) -> None:
        with self._lock:
            self.frames_out += 1
            self.bytes_out += size

    def event(self, name: str) -> None:
        with self._lock:
            self.events[name] += 1

    def reply(self, command: str | None, elapsed_us: int, category: str | None, out_bytes: int | None = None) -> None:
        """A final reply; ``out_bytes``: also count its frame out (one lock for both)."""
        key = command or "(none)"
        with self._lock:
            if out_bytes is not None:
                self.frames_out += 1
                self.bytes_out += out_bytes
            self.requests[key] += 1
            if category is not None:
                self.errors[category] += 1
            ring = self._latency.get(key)
            if ring is None:
                ring = self._latency[key] = deque(maxlen=RING)
            ring.append(elapsed_us)

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_mono

    def snapshot(self) -> dict:
        with self._lock:
            latency = {}
            for command, ring in self._latency.items():
                values = sorted(ring)
                latency[command] = {
                    "samples": len(values),
                    "p50_us": percentile(values, 0.50),
                    "p90_us": percentile(values, 0.90),
                    "p99_us": percentile(values, 0.99),
                    "max_us": values[-1] if values else 0,
                }
            return {
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "errors": dict(self.errors),
                "events": dict(self.events),
                "frames": {
                    "in": self.frames_in,
                    "out": self.frames_out,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                },
                "latency": latency,
                "uptime_s": round(self.uptime_s(), 3),
                "rss_bytes": rss_bytes(),
            }
