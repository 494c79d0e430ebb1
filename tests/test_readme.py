"""The top README's Python example, as written, served by a real worker.

Its Elixir counterpart runs in elixir_client/test/port_bridge/readme_test.exs
(a fresh BEAM, next to the same mathcmds.py); this test makes the same calls
from Python, so the example is checked even where Elixir is not installed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.workers import ROOT, worker_env

README = Path(ROOT) / "README.md"
BLOCK = re.compile(r"<!-- tested: [^\n]*? as (\w+\.py) -->\n```python\n(.*?)```", re.S)


def test_the_readme_has_its_python_example():
    assert [name for name, _ in BLOCK.findall(README.read_text())] == ["mathcmds.py"]


def test_the_readme_python_example_runs_as_written(tmp_path, spawn):
    ((name, code),) = BLOCK.findall(README.read_text())
    assert len(code.strip().splitlines()) < 15  # the README promises under 15 lines
    (tmp_path / name).write_text(code)
    w = spawn("--backends", "", "--expose", "mathcmds", env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert w.call("mathcmds.add", {"a": 1, "b": 2}) == 3
    assert w.request("mathcmds.add", {"a": "one"})["error"]["category"] == "validation"
    pending = w.submit("mathcmds.primes", {"below": 10})
    assert pending.wait(30)["success"]
    assert [e["data"]["value"] for e in pending.events if e["event"] == "chunk"] == [2, 3, 5, 7]
    assert w.call("describe")["commands"]["mathcmds.primes"]["cpu_bound"] is True
