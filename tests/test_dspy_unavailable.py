"""A worker whose DSPy cannot be imported: DSPy commands fail with 'initialization', the core keeps working.

The worker runs with a ``dspy`` package first on its path that fails to
import, the way a missing or broken installation does.
"""

from __future__ import annotations

import os

import pytest

from tests.support.workers import worker_env

FAILURES = {
    "missing": ("raise ModuleNotFoundError(\"No module named 'dspy'\", name='dspy')\n", "dspy_missing"),
    "broken": ("raise RuntimeError('a half-installed dependency')\n", "dspy_import_failed"),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_dspy_commands_fail_with_an_install_hint_and_the_core_keeps_working(spawn, tmp_path, kind):
    source, code = FAILURES[kind]
    (tmp_path / "dspy").mkdir()
    (tmp_path / "dspy" / "__init__.py").write_text(source)
    env = worker_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    w = spawn(env=env)
    err = w.request("create_program", {"signature": "question -> answer"})["error"]
    assert (err["category"], err["code"]) == ("initialization", code)
    assert "portbridge[dspy]" in err["message"] and "pip install" not in err["message"]
    assert err["recovery"] == "restart_worker"
    # Arguments are still checked first, and the commands are still documented.
    assert w.request("create_program", {"signature": "q: this -> a"})["error"]["category"] == "validation"
    assert "execute_program" in w.call("describe")["commands"]
    health = w.call("health")
    assert health["status"] == "degraded" and health["backends"]["dspy"]["state"] == "failed"
    assert "portbridge[dspy]" in health["backends"]["dspy"]["error"]
    assert w.call("echo", {"still": "alive"}) == {"still": "alive"}
    assert w.call("ping")["pong"]
