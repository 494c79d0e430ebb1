"""A fake monotonic clock for code that takes its clock as an argument: it stands still until a test moves ``t``."""

from __future__ import annotations


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
