"""The debugging CLI as a user runs it: call, encode | worker | decode, repl."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import subprocess
import sys
import time

from bridge import cli, codecs
from bridge.devtools.framecat import from_readable
from bridge.framing import FrameDecoder, encode_frame
from bridge.processes import alive as pid_alive
from tests.support.workers import worker_env

CLI = [sys.executable, "-m", "bridge"]


def run(*args, input: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout, env=worker_env())


def test_call_prints_the_reply_and_exits_zero():
    result = run("call", "ping")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["success"] is True and reply["result"]["pong"] is True


def test_call_in_msgpack_with_args():
    result = run("call", "echo", "--args", '{"x": 1}', "--format", "msgpack")
    assert result.returncode == 0 and json.loads(result.stdout)["result"] == {"x": 1}


def test_call_exits_one_on_an_error_reply():
    result = run("call", "sleep", "--args", '{"ms": 2000}', "--timeout-ms", "50")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["category"] == "timeout"


def test_call_prints_events_before_the_reply_and_passes_worker_options():
    result = run("call", "emit", "--args", '{"n": 2}', "--",
                 "--backend-module", "tests.support.misbehaving_backend:backend")
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("event chunk id=1 ") and lines[1].startswith("event chunk id=1 ")
    assert json.loads("\n".join(lines[2:]))["result"] == {"emitted": 2}


def test_call_refuses_args_that_are_not_a_json_object():
    result = run("call", "echo", "--args", "[1]")
    assert result.returncode != 0 and b"JSON object" in result.stderr


def test_encode_worker_decode_round_trip_in_both_formats():
    requests = [{"id": 1, "command": "echo", "args": {"blob": {"$bytes": "AAE="}}},
                {"id": 2, "command": "ping"}]
    lines = "\n".join(json.dumps(r) for r in requests).encode() + b"\n"
    frames = run("encode", "--format", "msgpack", input=lines).stdout
    decoder = FrameDecoder()
    decoder.feed(frames)
    assert [codecs.MSGPACK.decode(p) for p in decoder.frames()] == [from_readable(r) for r in requests]
    worker = subprocess.run([*CLI, "worker"], input=frames, capture_output=True, timeout=60, env=worker_env())
    assert worker.returncode == 0
    decoded = run("decode", input=worker.stdout)
    assert decoded.returncode == 0
    docs = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert docs[0]["event"] == "ready"
    replies = {d["id"]: d for d in docs[1:]}
    assert replies[1]["result"] == {"blob": {"$bytes": "AAE="}} and replies[2]["result"]["pong"] is True


def test_decode_reads_mixed_formats_and_reports_bad_frames():
    good_json = codecs.JSON.encode({"a": 1})
    good_msgpack = codecs.MSGPACK.encode({"b": b"\x00"})
    stream = b"".join(encode_frame(p) for p in (good_json, good_msgpack, b"[1]", b""))
    result = run("decode", "-v", input=stream + b"\x00\x00\x00\x09{}")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"format": "json", "length": len(good_json), "frame": {"a": 1}}
    assert lines[1]["format"] == "msgpack" and lines[1]["frame"] == {"b": {"$bytes": "AA=="}}
    assert "$error" in lines[2] and "$error" in lines[3] and "ended inside a frame" in lines[4]["$error"]
    assert result.returncode == 1


def test_repl_runs_one_request_per_line_with_sessions():
    script = b"""
# comments and blank lines are skipped
ping
echo {"x": 1}
:session s1
echo {"in": "session"}
list_sessions
{"id": "mine", "command": "echo", "args": {"full": "envelope"}}
"""
    result = run("repl", input=script)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert '"pong": true' in text and '"x": 1' in text and '"full": "envelope"' in text
    assert '"session_id": "s1"' in text and '"id": "mine"' in text


def test_repl_exits_one_when_a_request_failed():
    assert run("repl", input=b"no_such_command\n").returncode == 1


def _subcommands():
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


def test_every_option_of_every_command_says_what_it_does_and_every_command_has_examples():
    parser, commands = _subcommands()
    assert set(commands) == {"worker", "call", "repl", "encode", "decode", "demo"}
    for name, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"portbridge {name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        examples = text.split("examples:\n", 1)[-1]
        assert f"portbridge {name}" in examples, name
    for text in [parser.format_help(), *(sub.format_help() for sub in commands.values())]:
        assert "``" not in text and "%(" not in text


def test_repl_on_a_terminal_prompts_helps_and_completes_commands_with_tab():
    """A real terminal (a pty): the prompt, 'help' listing a backend's commands, TAB completing a name."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the repl, its worker with a test backend
        os.execvpe(sys.executable, [*CLI, "repl", "--", "--backends", "", "--backend-module",
                                    "tests.support.misbehaving_backend:backend"], worker_env(TERM="xterm"))
    seen = bytearray()

    def read_until(text: bytes, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], f"no {text!r} in {bytes(seen[-400:])!r}"
            seen.extend(os.read(fd, 65536))
        upto = seen.index(text) + len(text)
        out = bytes(seen[:upto]).decode()
        del seen[:upto]
        return out

    try:
        assert "Type 'help'" in read_until(b"portbridge> ")
        os.write(fd, b"hel\t\n")  # TAB completes 'help'
        listing = read_until(b"portbridge> ")
        assert "commands of this worker:" in listing and "print_stdout" in listing and "misbehaving" in listing
        os.write(fd, b"ech\t{\"tab\": 1}\n")  # TAB completes 'echo '
        assert '"tab": 1' in read_until(b"portbridge> ")
        os.write(fd, b":session s9\n")
        read_until(b"portbridge[s9]> ")
        os.write(fd, b"\x04")  # Ctrl-D
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
        if pid_alive(pid):
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_repl_help_lines_work_from_a_pipe_too():
    result = run("repl", input=b"help\nhelp sleep\nhelp nope\n")
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "commands of this worker:" in text and '"maximum": 86400000' in text and "no command 'nope'" in text
