"""The worker's messages reach every client's users (Elixir's too): they name commands, never one
client's syntax for sending them (a JSON request such as {"command": "configure_lm", ...})."""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.support.dspy_workers import dspy_worker, error_of

BRIDGE = pathlib.Path(__file__).resolve().parent.parent / "bridge"


# What builds a wire error (bridge/errors.py), by the name it is called under.
ERROR_BUILDERS = {"BridgeError", "protocol_error", "validation_error", "not_found", "overloaded", "_refuse", "_bad"}


def _error_strings(path: pathlib.Path):
    """The string constants inside calls that build an error."""
    for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(call, ast.Call):
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            if name in ERROR_BUILDERS:
                for node in ast.walk(call):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        yield node.lineno, node.value


def test_no_error_message_of_the_worker_spells_a_request_envelope():
    found = [f"{path.relative_to(BRIDGE.parent)}:{line}" for path in sorted(BRIDGE.rglob("*.py"))
             for line, text in _error_strings(path)
             if '"command":' in text.replace(" ", "") or '"args":{' in text.replace(" ", "")]
    assert found == [], f"error messages that advise a JSON request: {found}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("messages")) as w:
        yield w


@pytest.mark.parametrize("command, args, code", [
    ("execute_program", {"program_id": "p", "inputs": {"q": "x"}}, "no_lm_configured"),
    ("create_index", {"corpus": ["a passage"]}, "no_embedder_configured"),
])
def test_what_to_configure_is_said_in_words_and_named_in_details(worker, command, args, code):
    session = f"messages-{code}"
    if command == "execute_program":
        worker.call("create_program", {"signature": "q -> a", "program_id": "p"}, session_id=session)
    error = error_of(worker, command, args, session_id=session)
    assert error["code"] == code and error["details"]["hint"] in ("configure_lm", "configure_embedder")
    assert "{" not in error["message"] and error["details"]["hint"] in error["message"]
