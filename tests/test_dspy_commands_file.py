"""protocol/dspy_commands.json is what a real worker's describe says about the DSPy commands.

The Elixir client compiles the options, checks and docs of ``PortBridge.DSPy``
from this file, so a stale file is a client that drifted from the worker. When
this fails, run ``scripts/sync_protocol.sh`` and commit the file and its
``elixir_client/priv/`` copy with the change that moved them.
"""

from __future__ import annotations

import importlib.util
import json
import os

from bridge.contract import protocol_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = "run scripts/sync_protocol.sh and commit protocol/dspy_commands.json with its elixir_client/priv/ copy"


def _generator():
    spec = importlib.util.spec_from_file_location("dspy_commands", os.path.join(ROOT, "scripts", "dspy_commands.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file_text() -> str:
    with open(os.path.join(protocol_dir(), "dspy_commands.json"), encoding="utf-8") as f:
        return f.read()


def test_the_file_is_what_describe_reports(spawn):
    commands = spawn("--backends", "dspy").call("describe", {}, timeout_ms=60_000)["commands"]
    generator = _generator()
    in_file = json.loads(_file_text())["commands"]
    expected = generator.document(commands)["commands"]
    stale = sorted(name for name in set(in_file) | set(expected) if in_file.get(name) != expected.get(name))
    assert not stale, f"protocol/dspy_commands.json is stale for {stale}: {FIX}"
    assert _file_text() == generator.render(generator.document(commands)), f"layout differs: {FIX}"


def test_the_file_lists_only_dspy_commands_with_object_schemas():
    commands = json.loads(_file_text())["commands"]
    assert {"configure_lm", "create_program", "execute_program", "optimize_program"} <= set(commands)
    for name, entry in commands.items():
        assert entry["name"] == name and entry["backend"] == "dspy"
        assert entry["args"]["type"] == "object", name
