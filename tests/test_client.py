"""The Python client (``bridge.devtools.client``) against real workers: what its users rely on."""

from __future__ import annotations

import subprocess
import time

from bridge.devtools.client import WorkerClient
from tests.support.workers import worker_env


def test_leaving_a_client_waits_for_its_reader_before_closing_the_worker_s_stdout():
    """The reader thread reads stdout by descriptor number: a descriptor closed under it could be
    reused by the next worker's pipe, and the old reader would steal that worker's frames."""
    seen: list[dict] = []

    def slow_hook(frame: dict) -> None:  # a reader still busy with the last frames when the worker exits
        if frame.get("event") == "log":
            time.sleep(0.5)
        seen.append(frame)

    with WorkerClient(["--backends", "", "--log-frames", "--log-level", "info"], env=worker_env(),
                      stderr=subprocess.DEVNULL, on_frame=slow_hook) as client:
        assert client.call("ping")["pong"]
    # The worker logs its shutdown as its last frame; the client let its reader finish with it.
    assert any("shutting down" in f["data"]["message"] for f in seen if f.get("event") == "log")
    assert client.process.stdout.closed
