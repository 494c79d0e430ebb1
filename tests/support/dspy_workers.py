"""Real workers for the DSPy suites, shared by the tests of one module.

A worker with DSPy loaded costs about a second of CPU to start, so each
DSPy test module starts one (``module_worker``) and isolates its tests by
session instead of by process. The same hygiene as the ``spawn`` fixture:
every frame is checked against protocol/schemas, and the process must be
gone when the module is done.
"""

from __future__ import annotations

from bridge.client import RemoteError, WorkerClient
from tests.support.workers import checked_client, read_stderr

SCRIPTED_BACKEND = "tests.support.scripted_lm:backend"


dspy_worker = checked_client  # dspy_worker(folder, *worker_args, env=...): one per test module


def error_of(worker: WorkerClient, command: str, args: dict, **kw) -> dict:
    """The wire error of a request that must fail."""
    try:
        result = worker.call(command, args, **kw)
    except RemoteError as exc:
        return exc.error
    raise AssertionError(f"{command} succeeded: {result}")


def stderr_text(worker: WorkerClient) -> str:
    return read_stderr(worker.stderr_path)
