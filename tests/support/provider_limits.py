"""A provider's request rate limit, as the loopback OpenAI server enforces it, and what it counted.

Providers count requests per model over a window and answer the ones beyond
the limit with ``429`` and a ``Retry-After`` header. ``RequestWindow`` does the
same with a sliding window: at most ``limit`` requests of one model start in
any ``window_s`` seconds; a refused request does not count, and its
``Retry-After`` is the time until the oldest counted request leaves the window.
``Counters`` is what ``GET /stats`` reports, so tests and benchmarks (Python or
Elixir, in-process or against the standalone server) can prove "0 provider
429s".
"""

from __future__ import annotations

import collections
import math
import threading
import time


class RequestWindow:
    """At most ``limit`` requests per model in any ``window_s`` seconds (a sliding log, per model)."""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or not window_s > 0:
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._starts: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def admit(self, model: str, now: float | None = None) -> float | None:
        """None when the request may go on (it is counted), else the seconds to wait (Retry-After)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            starts = self._starts.setdefault(model, collections.deque())
            while starts and starts[0] + self.window_s <= now + 1e-9:  # (a client back after Retry-After is in)
                starts.popleft()
            if len(starts) < self.limit:
                starts.append(now)
                return None
            return max(starts[0] + self.window_s - now, 0.001)

    def describe(self) -> dict:
        return {"limit": self.limit, "window_s": self.window_s}


def retry_after_header(seconds: float) -> str:
    """Seconds as a Retry-After value, rounded up to the millisecond (DSPy reads decimals)."""
    return f"{math.ceil(seconds * 1000) / 1000:.3f}"


class Counters:
    """Requests the server received and the 429s it sent, by kind; read by ``GET /stats``."""

    FIELDS = ("requests", "completions", "responses_429", "rate_limited")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self, reset: bool = False) -> dict:
        with self._lock:
            values = dict(self._values)
            if reset:
                self._values = dict.fromkeys(self.FIELDS, 0)
        return values
