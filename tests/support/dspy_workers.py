"""Real workers for the DSPy suites, shared by the tests of one module.

A worker with DSPy loaded costs about a second of CPU to start, so each
DSPy test module starts one (``module_worker``) and isolates its tests by
session instead of by process. The same hygiene as the ``spawn`` fixture:
every frame is checked against protocol/schemas, and the process must be
gone when the module is done.
"""

from __future__ import annotations

import contextlib
import os

from bridge.client import RemoteError, WorkerClient
from tests.support.schemas import FrameChecker
from tests.support.workers import pid_alive, worker_env

SCRIPTED_BACKEND = "tests.support.scripted_lm:backend"


@contextlib.contextmanager
def dspy_worker(folder, *worker_args: str, env: dict | None = None):
    """A started worker (``.stderr_path``, ``.frames`` seen), stopped and checked on exit."""
    checker = FrameChecker()
    frames: list[dict] = []

    def on_frame(frame: dict) -> None:
        frames.append(frame)
        checker(frame)

    stderr_path = os.path.join(str(folder), f"worker-{len(os.listdir(folder))}.stderr")
    with open(stderr_path, "wb") as stderr:
        client = WorkerClient(list(worker_args), env=env or worker_env(), stderr=stderr, on_frame=on_frame)
    client.stderr_path = stderr_path
    client.frames = frames
    try:
        yield client
    finally:
        client.__exit__(None, None, None)
        client.kill()
        assert not pid_alive(client.pid), f"worker {client.pid} outlived its tests"
        assert not checker.problems, "frames broke protocol/schemas:\n" + "\n".join(checker.problems[:10])


def error_of(worker: WorkerClient, command: str, args: dict, **kw) -> dict:
    """The wire error of a request that must fail."""
    try:
        result = worker.call(command, args, **kw)
    except RemoteError as exc:
        return exc.error
    raise AssertionError(f"{command} succeeded: {result}")


def stderr_text(worker: WorkerClient) -> str:
    with open(worker.stderr_path, "rb") as f:
        return f.read().decode("utf-8", "replace")
