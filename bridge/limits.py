"""Limits and defaults: ``protocol/limits.json`` is their one home.

The worker's option defaults (``WORKER``), the fixed limits of a request
envelope (``ENVELOPE``) and of the byte stream (``FRAMING``) are read from that
file, which the Elixir client reads too; nothing else in the code writes one of
these numbers down. ``Limits`` holds the values in force in one worker: the
file's defaults, changed by command-line options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .contract import read_json

_FILE = read_json("limits.json")
WORKER: dict = _FILE["worker"]
ENVELOPE: dict = _FILE["envelope"]
FRAMING: dict = _FILE["framing"]


@dataclass
class Limits:
    """The limits of one worker, as ``ready`` and ``describe`` report them."""

    max_frame_bytes: int = WORKER["max_frame_bytes"]
    max_frame_values: int = WORKER["max_frame_values"]
    max_concurrency: int = WORKER["max_concurrency"]
    max_queue: int = WORKER["max_queue"]
    max_sessions: int = WORKER["max_sessions"]
    session_ttl_s: float = WORKER["session_ttl_s"]
    shutdown_grace_s: float = WORKER["shutdown_grace_s"]
    max_callbacks: int = WORKER["max_callbacks"]

    def describe(self) -> dict:
        return asdict(self)
