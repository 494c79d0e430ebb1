"""Waiting for a condition the worker reports, without sleeping blindly."""

from __future__ import annotations

import time


def until(fetch, done, timeout: float = 5.0, interval: float = 0.01):
    """Call ``fetch()`` until ``done(result)`` holds; returns that result, fails after ``timeout`` s.

    Used with control commands (``stats``, ``list_sessions``), which the worker
    answers at once, to wait for a state it reaches asynchronously.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s: {result}"
        time.sleep(interval)
