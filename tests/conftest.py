"""Fixtures that start real worker processes and prove none outlives its test."""

from __future__ import annotations

import pytest

from bridge.client import WorkerClient
from tests.support.schemas import FrameChecker
from tests.support.workers import RawWorker, pid_alive, worker_env


@pytest.fixture
def spawn(tmp_path):
    """``spawn(*worker_args, env=..., fmt=...)`` -> a started WorkerClient, cleaned up after the test.

    Every frame the worker sends is checked against protocol/schemas; the test
    fails if one breaks them, or if the worker process outlives the test.
    """
    started: list[WorkerClient] = []
    checker = FrameChecker()

    def start(*worker_args: str, env: dict | None = None, fmt: str = "json", **kw) -> WorkerClient:
        stderr = open(tmp_path / f"worker-{len(started)}.stderr", "wb")
        client = WorkerClient(
            list(worker_args), fmt=fmt, env=env or worker_env(), stderr=stderr, on_frame=checker, **kw
        )
        client.stderr_path = stderr.name
        stderr.close()
        started.append(client)
        return client

    yield start
    for client in started:
        client.__exit__(None, None, None)
        client.kill()
        assert not pid_alive(client.pid), f"worker {client.pid} outlived its test"
    assert not checker.problems, "frames broke protocol/schemas:\n" + "\n".join(checker.problems[:10])


@pytest.fixture
def raw(tmp_path):
    """``raw(*worker_args)`` -> a started RawWorker (bytes in, frames out), cleaned up after the test."""
    started: list[RawWorker] = []

    def start(*worker_args: str, env: dict | None = None) -> RawWorker:
        worker = RawWorker(*worker_args, env=env, stderr_path=str(tmp_path / f"raw-{len(started)}.stderr"))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close_stdin()
        try:
            worker.wait(5)
        except Exception:
            pass
        worker.kill()
        assert not pid_alive(worker.pid), f"worker {worker.pid} outlived its test"
