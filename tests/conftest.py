"""Fixtures that start real worker processes and prove none outlives its test."""

from __future__ import annotations

import contextlib

import pytest

from bridge.devtools.client import WorkerClient
from bridge.processes import alive as pid_alive
from tests.support.workers import RawWorker, checked_client


@pytest.fixture
def spawn(tmp_path):
    """``spawn(*worker_args, env=..., fmt=...)`` -> a started WorkerClient, cleaned up after the test.

    Every frame the worker sends is checked against protocol/schemas; the test
    fails if one breaks them, or if the worker process outlives the test.
    """
    with contextlib.ExitStack() as stack:

        def start(*worker_args: str, env: dict | None = None, fmt: str = "json", **kw) -> WorkerClient:
            return stack.enter_context(checked_client(tmp_path, *worker_args, env=env, fmt=fmt, **kw))

        yield start


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
