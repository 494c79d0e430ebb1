"""The top README's Python examples, as written, served by a real worker.

Their Elixir counterparts run in elixir_client/test/port_bridge/readme_test.exs
(a fresh BEAM, next to the same mathcmds.py and myprogs.py); these tests make
the same calls from Python, so the examples are checked even where Elixir is
not installed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.workers import ROOT, worker_env

README = Path(ROOT) / "README.md"
BLOCK = re.compile(r"<!-- tested: [^\n]*? as (\w+\.py) -->\n```python\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text()))


def test_the_readme_has_its_python_examples():
    assert list(blocks()) == ["mathcmds.py", "myprogs.py"]


def test_the_readme_python_example_runs_as_written(tmp_path, spawn):
    name, code = "mathcmds.py", blocks()["mathcmds.py"]
    assert len(code.strip().splitlines()) < 15  # the README promises under 15 lines
    (tmp_path / name).write_text(code)
    w = spawn("--backends", "", "--expose", "mathcmds", env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert w.call("mathcmds.add", {"a": 1, "b": 2}) == 3
    assert w.request("mathcmds.add", {"a": "one"})["error"]["category"] == "validation"
    pending = w.submit("mathcmds.primes", {"below": 10})
    assert pending.wait(30)["success"]
    assert [e["data"]["value"] for e in pending.events if e["event"] == "chunk"] == [2, 3, 5, 7]
    assert w.call("describe")["commands"]["mathcmds.primes"]["cpu_bound"] is True


def test_the_readme_program_example_runs_as_written(tmp_path, spawn):
    (tmp_path / "myprogs.py").write_text(blocks()["myprogs.py"])
    w = spawn("--expose", "myprogs", env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    w.call("configure_lm", {"model": "offline"})
    made = w.call("create_program", {"module": "myprogs.MultiHop", "init": {"hops": 2}, "program_id": "mh"})
    assert made["predictors"] == ["generate_query.predict", "generate_answer.predict"]
    queries: list = []
    pending = w.submit("execute_program", {"program_id": "mh", "inputs": {"question": "Who wrote DSPy?"}},
                       callbacks={"search": lambda args: queries.append(args["query"]) or [f"about {args['query']}"]})
    reply = pending.wait(60)
    assert reply["success"] and isinstance(reply["result"]["outputs"]["answer"], str), reply
    assert len(queries) == 2 and [e["data"] for e in pending.events if e["event"] == "progress"] == \
        [{"done": 1, "total": 2}, {"done": 2, "total": 2}]
    assert w.call("describe")["backends"]["dspy"]["exposed_programs"]["myprogs.MultiHop"]["init"] == {
        "type": "object", "properties": {"hops": {"type": "integer", "default": 2}}, "additionalProperties": False}

