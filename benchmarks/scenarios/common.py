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


def worker_settled(peer: Peer, backends: bool = False, timeout: float = 60.0) -> dict:
    """Wait until no backend of the worker is loading (a background import would steal the CPU).

    ``backends``: the worker loads backends, so also wait for them to be registered
    (they register just after ``ready``)."""
    deadline = time.monotonic() + timeout
    while True:
        health = call(peer, "health")
        states = [b.get("state") for b in health.get("backends", {}).values()]
        settled = "loading" not in states and (states or not backends)
        if settled or time.monotonic() > deadline:
            return health
        time.sleep(0.02)


def has_command(peer: Peer, command: str, timeout: float = 10.0) -> bool:
    """Whether the worker has ``command`` once its backends registered."""
    deadline = time.monotonic() + timeout
    while True:
        if command in call(peer, "describe")["commands"]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def dspy_program(peer: Peer, lm: dict, program_id: str = "p", session_id: str | None = None) -> None:
    """Configure an LM and create the scenarios' program: Predict('question -> answer')."""
    extra = {"session_id": session_id} if session_id else {}
    call(peer, "configure_lm", lm, **extra)
    call(peer, "create_program", {"signature": "question -> answer", "program_id": program_id}, **extra)


def execute_frame(rid: int, program_id: str = "p", fmt: str = "json") -> bytes:
    return frame({"id": rid, "command": "execute_program",
                  "args": {"program_id": program_id, "inputs": {"question": f"question number {rid}?"}}}, fmt)
