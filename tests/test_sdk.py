"""bridge.sdk at the real boundary: decorated functions served by real worker processes.

The commands are in tests/support/sdk_commands.py, exposed as a user would
(``--expose tests.support.sdk_commands``): schemas from hints checked before
the call, conversions, streaming, the context, and every way a function can
misbehave, each answered with its category while the worker keeps serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import jsonschema
import pytest

from bridge.processes import kill_process
from tests.support.waiting import until
from tests.support.workers import ROOT, read_stderr, worker_env

EXPOSE = ("--backends", "", "--expose", "tests.support.sdk_commands")
NS = "sdk_commands."


@pytest.fixture
def w(spawn):
    return spawn(*EXPOSE)


def error_of(worker, command: str, args: dict | None = None, **kw) -> dict:
    reply = worker.request(NS + command, args or {}, **kw)
    assert reply["success"] is False, reply
    return reply["error"]


# -- describe --------------------------------------------------------------------------

def test_describe_lists_namespaced_commands_with_schemas_docstrings_and_cpu_bound(w):
    info = w.call("describe")
    commands = {name: c for name, c in info["commands"].items() if name.startswith(NS)}
    assert NS + "add" in commands and NS + "renamed" in commands and NS + "burn" not in commands
    add = commands[NS + "add"]
    assert add["backend"] == "sdk_commands" and add["description"] == "Add two integers."
    assert add["args"] == {"type": "object", "properties": {"a": {"type": "integer"},
                                                            "b": {"type": "integer", "default": 1}},
                           "required": ["a"], "additionalProperties": False}
    assert [n for n, c in commands.items() if c["cpu_bound"]] == [NS + "renamed"]
    assert info["commands"]["echo"]["cpu_bound"] is False
    assert info["backends"]["sdk_commands"]["module"] == "tests.support.sdk_commands"
    polygon = commands[NS + "describe_polygon"]
    assert polygon["description"] == "Report what arrived, and as which Python types."
    props = polygon["args"]["properties"]
    assert props["polygon"]["description"] == "the polygon to describe."  # from the Args: section
    assert props["mode"] == {"enum": ["area", "perimeter"], "default": "area",
                             "description": "what to compute, area or perimeter (a continuation line)."}
    assert props["color"] == {"enum": ["red", "green"], "default": "red"}
    assert props["polygon"]["properties"]["corners"]["items"]["required"] == ["x", "y"]
    assert props["scale"] == {"type": ["number", "null"], "default": None}
    for c in commands.values():  # every derived schema is a JSON Schema other tools can use
        jsonschema.Draft202012Validator.check_schema(c["args"])


# -- calls -----------------------------------------------------------------------------

def test_arguments_arrive_as_the_hints_promise(w):
    result = w.call(NS + "describe_polygon", {
        "polygon": {"name": "square", "corners": [{"x": 0, "y": 0}, {"x": 1, "y": 0.5}]},
        "color": "green", "weights": {"a": 1}, "shape": [2, 3]})
    assert result["types"] == ["Polygon", "dict", "Color", "tuple"]
    assert result["color"] == "green" and result["shape"] == [2, 3] and result["mode"] == "area"
    assert result["polygon"] == {"name": "square", "corners": [{"x": 0, "y": 0}, {"x": 1, "y": 0.5}], "tags": []}
    assert w.call(NS + "add", {"a": 2}) == 3
    assert w.call(NS + "add", {"a": 2, "b": 5}) == 7
    assert w.call(NS + "double", {"x": 21}) == 42  # async def
    assert w.call(NS + "everything", {"p": 1, "q": 2}) == {"p": 1, "q": 2}  # **kwargs
    assert w.call(NS + "renamed", {"ms": 1})["spins"] > 0


@pytest.mark.parametrize("command,args,path", [
    ("add", {}, "args.a"),
    ("add", {"a": "1"}, "args.a"),
    ("add", {"a": 1.5}, "args.a"),
    ("add", {"a": True}, "args.a"),
    ("add", {"a": 1, "c": 2}, "args.c"),
    ("describe_polygon", {"polygon": {"name": "p", "corners": [{"x": 0}]}}, "args.polygon.corners[0].y"),
    ("describe_polygon", {"polygon": {"name": "p", "corners": [], "colour": 1}}, "args.polygon.colour"),
    ("describe_polygon", {"polygon": {"name": "p", "corners": []}, "color": "blue"}, "args.color"),
    ("describe_polygon", {"polygon": {"name": "p", "corners": []}, "weights": {"a": "x"}}, "args.weights.a"),
    ("renamed", {"ms": -1}, "args.ms"),
    ("everything", {"p": "x"}, "args.p"),
])
def test_arguments_that_fail_the_derived_schema_are_refused_before_the_call(w, command, args, path):
    error = error_of(w, command, args)
    assert (error["category"], error["code"], error["details"]["path"]) == ("validation", "invalid_args", path)
    assert w.call(NS + "add", {"a": 1}) == 2


def test_a_value_error_is_a_validation_error_with_the_message_only(spawn):
    error = error_of(spawn(*EXPOSE), "sqrt", {"x": -4})
    assert (error["category"], error["code"]) == ("validation", "invalid_value")
    assert error["message"] == "x must be >= 0, got -4" and error["details"] == {"exception": "ValueError"}
    debug = error_of(spawn(*EXPOSE, "--debug"), "sqrt", {"x": -4})
    assert 'raise ValueError(f"x must be >= 0, got {x}")' in debug["details"]["traceback"]


@pytest.mark.parametrize("kind,exception,message", [
    ("runtime", "RuntimeError", "RuntimeError: the model is not loaded"),
    ("key", "KeyError", "KeyError: 'missing'"),
    ("zero", "ZeroDivisionError", "ZeroDivisionError: division by zero"),
    ("base", "BaseException", "BaseException: the root of it all"),
    ("exit", "SystemExit", "SystemExit: 3"),
    ("keyboard", "KeyboardInterrupt", "KeyboardInterrupt"),
    ("generator_exit", "GeneratorExit", "GeneratorExit"),
    ("memory", "MemoryError", "MemoryError"),
    ("recursion", "RecursionError", "RecursionError: too deep"),
])
def test_anything_else_raised_is_an_execution_error_and_the_worker_keeps_serving(w, kind, exception, message):
    error = error_of(w, "fail", {"kind": kind})
    assert (error["category"], error["code"], error["message"]) == ("execution", "command_failed", message)
    assert error["details"] == {"exception": exception}
    assert w.call(NS + "add", {"a": 1}) == 2 and w.call("ping")["pid"] == w.pid


def test_a_bridge_error_keeps_its_category(w):
    error = error_of(w, "fail", {"kind": "not_found"})
    assert (error["category"], error["code"], error["message"]) == ("not_found", "unknown_document", "no document 'd9'")


@pytest.mark.parametrize("kind,fmt,ok", [
    ("object", "json", False), ("nested", "msgpack", False), ("int_keys", "json", False),
    ("bytes", "json", False), ("bytes", "msgpack", True),
])
def test_unencodable_returns_are_serialization_errors(spawn, kind, fmt, ok):
    w = spawn(*EXPOSE, fmt=fmt)
    reply = w.request(NS + "unencodable", {"kind": kind})
    assert reply["success"] is ok, reply
    if not ok:
        assert (reply["error"]["category"], reply["error"]["code"]) == ("serialization", "unencodable_result")
    assert w.call(NS + "add", {"a": 1}) == 2


def test_prints_to_stdout_reach_stderr_and_never_the_frames(w):
    assert w.call(NS + "chatty", {"text": "hello from user code"}) == "HELLO FROM USER CODE"
    assert w.call(NS + "add", {"a": 1}) == 2  # the frame stream is intact (every frame was checked)
    w.close()
    assert read_stderr(w.stderr_path).count("hello from user code") == 3


def test_a_function_blocking_past_its_deadline_gets_timeout_and_the_worker_keeps_serving(w):
    started = time.monotonic()
    error = error_of(w, "block", {"seconds": 3}, timeout_ms=200)
    assert (error["category"], error["code"]) == ("timeout", "deadline_exceeded")
    assert time.monotonic() - started < 2.5  # answered at the deadline, not when the sleep ends
    assert w.call(NS + "add", {"a": 1}) == 2 and w.call("ping")["pong"]


# -- streaming and the context -----------------------------------------------------------

def test_a_generator_streams_chunks_and_progress_then_returns_the_result(w):
    reply = (pending := w.submit(NS + "count", {"n": 4})).wait(10)
    assert reply["success"] and reply["result"] == 6
    chunks = [e["data"] for e in pending.events if e["event"] == "chunk"]
    progress = [e["data"] for e in pending.events if e["event"] == "progress"]
    assert chunks == [{"value": i} for i in range(4)]
    assert progress == [{"done": i, "total": 4, "stage": "counting"} for i in range(1, 5)]


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_stream_stops_when_cancelled_or_past_its_deadline(w, how):
    marker = f"stream-{how}"
    pending = w.submit(NS + "endless", {"marker": marker}, timeout_ms=300 if how == "deadline" else None)
    if how == "cancel":
        until(lambda: len(pending.events), lambda n: n >= 3)
        assert w.call("cancel", {"request_id": pending.id})["cancelled"] is True
    reply = pending.wait(10)
    assert reply["error"]["category"] == ("cancelled" if how == "cancel" else "timeout")
    until(lambda: w.call(NS + "stopped", {"marker": marker}), lambda r: r["stopped"])  # the generator was closed


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_an_async_command_is_cancelled_with_its_request(w, how):
    marker = f"async-{how}"
    pending = w.submit(NS + "slow_async", {"marker": marker}, timeout_ms=300 if how == "deadline" else None)
    if how == "cancel":
        until(lambda: w.call("stats"), lambda s: s["running"] >= 1)
        w.call("cancel", {"request_id": pending.id})
    assert pending.wait(10)["error"]["category"] == ("cancelled" if how == "cancel" else "timeout")
    until(lambda: w.call(NS + "stopped", {"marker": marker}), lambda r: r["stopped"])


def test_a_chunk_no_frame_can_carry_fails_the_request(w):
    reply = (pending := w.submit(NS + "bad_chunk")).wait(10)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("serialization", "unencodable_result")
    assert [e["data"] for e in pending.events] == [{"value": 1}]


def test_state_belongs_to_the_session_and_goes_with_it(w):
    w.call(NS + "remember", {"key": "k", "value": "alice's"}, session_id="alice")
    w.call(NS + "remember", {"key": "k", "value": "bob's"}, session_id="bob")
    assert w.call(NS + "remember", {"key": "k"}, session_id="alice") == {"state": {"k": "alice's"},
                                                                          "session_id": "alice"}
    assert w.call(NS + "remember", {"key": "k"})["state"] == {}  # the global scope is a scope of its own
    w.call("end_session", {"session_id": "alice"})
    assert w.call(NS + "remember", {"key": "k"}, session_id="alice")["state"] == {}
    assert w.call(NS + "remember", {"key": "k"}, session_id="bob")["state"] == {"k": "bob's"}


def test_the_context_calls_the_client_back(w):
    assert w.call(NS + "ask_client", {"question": "6 x 7?"},
                  callbacks={"answer": lambda args: {"heard": args["question"], "says": 42}}) == \
        {"answer": {"heard": "6 x 7?", "says": 42}}
    # The client's failure is the command's, in the client's category.
    reply = w.request(NS + "ask_client", {"question": "?"}, callbacks={"answer": lambda args: 1 / 0})
    assert reply["error"]["category"] == "execution" and "division by zero" in reply["error"]["message"]
    # A name the client did not register.
    assert w.request(NS + "ask_client", {"question": "?"}, callbacks={})["error"]["category"] == "not_found"


def test_the_context_tells_the_deadline_and_cancels_a_cooperative_wait(w):
    timed = w.call(NS + "clock", timeout_ms=5000)
    assert timed["has_deadline"] and 0 < timed["remaining"] <= 5 and timed["cancelled"] is False
    assert w.call(NS + "clock")["remaining"] is None
    pending = w.submit(NS + "patient", {"seconds": 30})
    until(lambda: w.call("stats"), lambda s: s["running"] >= 1)
    w.call("cancel", {"request_id": pending.id})
    assert pending.wait(10)["error"]["category"] == "cancelled"
    until(lambda: w.call("stats"), lambda s: s["running"] == 0)  # the wait stopped at once


# -- what the operator exposes, and only that ---------------------------------------------

@pytest.mark.parametrize("name", [
    "sdk_commands.FAILURES", "sdk_commands.Opaque", "sdk_commands.command", "sdk_commands.os",
    "sdk_commands.burn", "tests.support.sdk_commands.add", "os.system", "builtins.eval", "sdk_commands.__init__",
])
def test_only_decorated_functions_of_exposed_modules_are_commands(w, name):
    reply = w.request(name, {})
    assert (reply["error"]["category"], reply["error"]["code"]) == ("not_found", "unknown_command")


def write_module(folder, dotted: str, source: str) -> None:
    path = folder.joinpath(*dotted.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(folder).parents:
        if str(parent) != ".":
            (folder / parent / "__init__.py").touch()
    path.write_text(textwrap.dedent(source))


ONE_COMMAND = """
    from bridge.sdk import command

    @command
    def whoami() -> str:
        return __name__
"""


def run_worker(folder, *args: str, timeout: float = 30.0) -> tuple[int, str]:
    """A worker expected to stop by itself at start-up: (exit code, stderr). Its stdin stays
    open, so that only a failed start ends it."""
    with open(folder / "worker.stderr", "wb+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "bridge", "worker", "--backends", "", *args],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, cwd=folder,
                                   env=worker_env(PYTHONPATH=f"{folder}{os.pathsep}{ROOT}"))
        try:
            process.wait(timeout)
        finally:
            kill_process(process)
            process.stdin.close()
    return process.returncode, read_stderr(folder / "worker.stderr")


def test_two_modules_under_one_namespace_are_refused_until_one_is_renamed(tmp_path, spawn):
    write_module(tmp_path, "team_a.cmds", ONE_COMMAND)
    write_module(tmp_path, "team_b.cmds", ONE_COMMAND)
    code, stderr = run_worker(tmp_path, "--expose", "team_a.cmds,team_b.cmds")
    assert code == 2 and "team_a.cmds and team_b.cmds would both be exposed as 'cmds'" in stderr
    w = spawn("--backends", "", "--expose", "team_a.cmds", "--expose", "team_b.cmds=b_cmds",
              env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert (w.call("cmds.whoami"), w.call("b_cmds.whoami")) == ("team_a.cmds", "team_b.cmds")


def test_installed_modules_are_exposed_through_the_entry_point_group(tmp_path, spawn):
    write_module(tmp_path, "geodist.geometry", ONE_COMMAND)
    info = tmp_path / "geodist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: geodist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[portbridge.commands]\ngeo = geodist.geometry\n")
    env = worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    assert spawn("--backends", "geo", env=env).call("geo.whoami") == "geodist.geometry"
    assert spawn("--backends", "", env=env).request("geo.whoami")["error"]["category"] == "not_found"


@pytest.mark.parametrize("source,message", [
    ("def f(x: set) -> None: ...", "bad_hints.f(x): set has no JSON form"),
    ("def f(x: dict[int, str]) -> None: ...", "JSON maps have string keys"),
    ("def f(x: tuple[int, str]) -> None: ...", "use tuple[T, ...], list[T] or a dataclass"),
    ("def f(x: 'Undefined') -> None: ...", "bad_hints.f: its type hints cannot be resolved"),
    ("def f(x: int, /) -> None: ...", "parameter 'x' is positional-only"),
    ("@dataclass\nclass Node:\n    children: list['Node']\n\ndef f(x: Node) -> None: ...", "Node refers to itself"),
    ("def f(x: Annotated[int, Schema(minimun=1)]) -> None: ...", "unsupported keywords ['minimun']"),
])
def test_a_hint_without_a_json_form_stops_the_worker_at_start_up_naming_it(tmp_path, source, message):
    decorated = source.replace("def f", "@command\ndef f")
    write_module(tmp_path, "bad_hints", "from dataclasses import dataclass\nfrom typing import Annotated\n"
                 "from bridge.sdk import Schema, command\n\n" + decorated + "\n")
    code, stderr = run_worker(tmp_path, "--expose", "bad_hints")
    assert code == 2 and message in stderr, stderr


def test_a_module_that_fails_to_import_is_reported_and_the_rest_is_served(tmp_path, spawn):
    write_module(tmp_path, "broken_cmds", "raise SystemExit('cannot start')\n")
    w = spawn("--backends", "", "--expose", "broken_cmds", "--expose", "tests.support.sdk_commands",
              env=worker_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert w.call(NS + "add", {"a": 1}) == 2
    health = w.call("health")
    assert health["status"] == "degraded"
    assert "SystemExit: cannot start" in json.dumps(health["backends"])


@pytest.mark.parametrize("value", ["not a module!", "mod=not-an-identifier", "a..b"])
def test_a_malformed_expose_stops_the_worker_before_ready(tmp_path, value):
    code, stderr = run_worker(tmp_path, "--expose", value)
    assert code == 2 and "--expose" in stderr and "ready" not in stderr


def test_a_module_without_commands_stops_the_worker(tmp_path):
    write_module(tmp_path, "plain", "def f(): pass\n")
    code, stderr = run_worker(tmp_path, "--expose", "plain")
    assert code == 2 and "has no @command functions" in stderr
