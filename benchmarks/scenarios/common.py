"""Helpers the scenarios share: interleaved repeats and talking to a worker by command."""

from __future__ import annotations

import itertools
import time

from ..harness import Peer, decode, frame

_ids = itertools.count(10**9)  # ids of helper requests, far from a scenario's own


def interleave(names: list[str], rounds: int, measure) -> dict[str, list]:
    """``measure(name)`` for every name, ``rounds`` times, alternating the order each round."""
    runs: dict[str, list] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            runs[name].append(measure(name))
    return runs


def call(peer: Peer, command: str, args: dict | None = None, fmt: str = "json", **envelope) -> dict:
    """One request through raw frames; returns the result, raising on an error reply."""
    rid = next(_ids)
    peer.send(frame({"id": rid, "command": command, "args": args or {}, **envelope}, fmt))
    while True:
        doc = decode(peer.recv())
        if doc.get("id") == rid and "event" not in doc:
            break
    if not doc["success"]:
        raise RuntimeError(f"{command} failed: {doc['error']}")
    return doc["result"]


def worker_settled(peer: Peer, timeout: float = 60.0) -> dict:
    """Wait until no backend of the worker is still loading (a background import would steal the CPU)."""
    deadline = time.monotonic() + timeout
    while True:
        health = call(peer, "health")
        states = [b.get("state") for b in health.get("backends", {}).values()]
        if "loading" not in states or time.monotonic() > deadline:
            return health
        time.sleep(0.02)
