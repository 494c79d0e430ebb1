"""Real workers for the DSPy suites, shared by the tests of one module.

A worker with DSPy loaded costs about a second of CPU to start, so each
DSPy test module starts one (``module_worker``) and isolates its tests by
session instead of by process. The same hygiene as the ``spawn`` fixture:
every frame is checked against protocol/schemas, and the process must be
gone when the module is done.
"""

from __future__ import annotations

import pytest

from bridge.devtools.client import RemoteError, WorkerClient
from tests.support.openai_server import OpenAIServer
from tests.support.workers import checked_client, read_stderr, worker_env

SCRIPTED_BACKEND = "tests.support.scripted_lm:backend"


dspy_worker = checked_client  # dspy_worker(folder, *worker_args, env=...): one per test module


def module_worker(name: str, *worker_args: str, own_cache: bool = False):
    """A module-scoped ``worker`` fixture (``worker = module_worker("name")``): one real worker for the module;
    ``own_cache``: a DSPy response cache of its own, so that no earlier run answers its calls."""

    @pytest.fixture(scope="module")
    def worker(tmp_path_factory):
        folder = tmp_path_factory.mktemp(name)
        env = worker_env(DSPY_CACHEDIR=str(folder / "dspy-cache")) if own_cache else None
        with dspy_worker(folder, *worker_args, env=env) as w:
            yield w

    return worker


def module_server(**settings):
    """A module-scoped ``server`` fixture (``server = module_server(api_key=KEY)``): the loopback OpenAI server."""

    @pytest.fixture(scope="module")
    def server():
        with OpenAIServer(**settings) as s:
            yield s

    return server


def error_of(worker: WorkerClient, command: str, args: dict, **kw) -> dict:
    """The wire error of a request that must fail."""
    try:
        result = worker.call(command, args, **kw)
    except RemoteError as exc:
        return exc.error
    raise AssertionError(f"{command} succeeded: {result}")


def stderr_text(worker: WorkerClient) -> str:
    return read_stderr(worker.stderr_path)
