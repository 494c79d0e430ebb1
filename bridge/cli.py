"""The ``portbridge`` command line: the worker an Erlang Port spawns, and tools to poke one by hand.

    portbridge worker [options]             serve the protocol on stdin/stdout
    portbridge call COMMAND [--args JSON]   spawn a worker, send one request, print events and reply
    portbridge repl                         one worker, one request per input line
    portbridge encode [--format F]          JSON lines -> frames
    portbridge decode [FILE]                frames (either format, mixed) -> JSON lines
    portbridge demo                         a DSPy program driven through real frames, offline

``call``, ``repl`` and ``demo`` pass everything after ``--`` to the worker they spawn.
Every command but ``worker`` is a developer tool of ``bridge.devtools``, imported
only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import __version__

FORMATS = ("auto", "json", "msgpack")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

DESCRIPTION = """\
portbridge: a framed stdio worker that lets Elixir (through an Erlang Port) use
Python ML frameworks such as DSPy. 'portbridge worker' is what a client spawns;
the other commands poke a worker by hand. Each command's --help has examples."""

EXAMPLES = {
    "worker": """\
examples:
  portbridge worker                                  # what a Port spawns: frames on stdin/stdout
  portbridge worker --format msgpack --max-concurrency 8 --log-level info
  portbridge worker --backends ''                    # the core commands only, no DSPy
  portbridge worker --backend-module mypkg.mod:backend   # also load a backend you are writing
  portbridge worker --expose mypkg.mathcmds          # serve mypkg/mathcmds.py's @command functions
  portbridge worker --log-frames --quiet-stderr      # logs only as 'log' frames (a quiet test suite)
  printf '{"id":1,"command":"ping"}\\n' | portbridge encode | portbridge worker | portbridge decode""",
    "call": """\
examples:
  portbridge call ping
  portbridge call describe                           # every command with its argument schema
  portbridge call echo --args '{"x": 1}' --format msgpack
  portbridge call sleep --args '{"ms": 500}' --timeout-ms 100     # exits 1: a timeout error
  portbridge call list_programs --session s1 -- --backends dspy   # after --: options of the worker
exit status: 0 on a success reply, 1 on an error reply, 2 if the worker could not answer.""",
    "repl": """\
examples:
  portbridge repl                                    # type 'help'; TAB completes command names
  printf 'ping\\necho {"a": 1}\\n' | portbridge repl
a line is COMMAND [ARGS-JSON], or a whole request envelope as JSON; ':session S' sets
the session of the lines that follow (':session' alone clears it); '#' starts a comment;
'help' lists the worker's commands, 'help COMMAND' shows one with its arguments.""",
    "encode": """\
examples:
  printf '{"id":1,"command":"ping"}\\n' | portbridge encode > ping.frames
  portbridge encode --format msgpack < requests.jsonl | portbridge worker | portbridge decode
bytes are written as {"$bytes": "<base64>"} (see 'portbridge decode --help').""",
    "decode": """\
examples:
  portbridge decode captured.frames
  portbridge worker < ping.frames | portbridge decode -v
values JSON cannot hold are tagged: {"$bytes": base64}, {"$ext": [code, base64]},
{"$timestamp": [s, ns]}, {"$float": "nan"}; a bad frame prints {"$error": ...}.""",
    "demo": """\
examples:
  portbridge demo                                    # the built-in offline LM: no network, no key
  OPENAI_API_KEY=... portbridge demo --model openai/gpt-4o-mini
  portbridge demo --model openai/llama3 --api-base http://127.0.0.1:8000/v1""",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    from .limits import WORKER as D  # protocol/limits.json: the one home of these defaults

    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="frame format; auto detects each frame and answers in kind (default %(default)s)")
    p.add_argument("--max-frame-bytes", type=_positive_int, default=D["max_frame_bytes"], metavar="N",
                   help="largest accepted frame payload (default %(default)s bytes)")
    p.add_argument("--max-frame-values", type=_positive_int, default=D["max_frame_values"], metavar="N",
                   help="most values one frame may decode to: array elements, map entries, containers "
                        "(default %(default)s; bounds the memory one request can take)")
    p.add_argument("--max-concurrency", type=_positive_int, default=D["max_concurrency"], metavar="N",
                   help="non-control requests running at once (default %(default)s)")
    p.add_argument("--max-queue", type=_non_negative_int, default=D["max_queue"], metavar="N",
                   help="requests waiting beyond that before 'overloaded' (default %(default)s)")
    p.add_argument("--session-ttl", type=_non_negative_float, default=D["session_ttl_s"], metavar="S",
                   help="seconds an idle session is kept (default %(default)s)")
    p.add_argument("--max-sessions", type=_positive_int, default=D["max_sessions"], metavar="N",
                   help="sessions held at once (default %(default)s)")
    p.add_argument("--shutdown-grace", type=_non_negative_float, default=D["shutdown_grace_s"], metavar="S",
                   help="seconds in-flight work may finish at shutdown (default %(default)s)")
    p.add_argument("--max-callbacks", type=_positive_int, default=D["max_callbacks"], metavar="N",
                   help="callbacks waiting for the client at once before 'overloaded' (default %(default)s)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help="least severe log record written to stderr (default %(default)s)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="stderr log lines as text or as one JSON object each (default %(default)s)")
    p.add_argument("--log-frames", action="store_true", help="also forward log records as 'log' events")
    p.add_argument("--quiet-stderr", action="store_true",
                   help="write no log record to stderr (for test suites; with --log-frames they still go out "
                        "as 'log' events): the worker's own, Python warnings, uncaught exceptions, and lines "
                        "Python code prints (sys.stdout as info, sys.stderr as warning records)")
    p.add_argument("--backends", default=None, metavar="NAMES",
                   help="comma-separated installed plug-ins to load: backends, and modules of @command functions "
                        "by namespace (default: every installed one; '' for none)")
    p.add_argument("--backend-module", action="append", default=[], metavar="MODULE:ATTR",
                   help="also load the backend object at this import path (repeatable; for developing backends)")
    p.add_argument("--expose", action="append", default=[], metavar="MODULE[=NAMESPACE]",
                   help="serve the @command functions of this Python module (bridge.sdk) as NAMESPACE.function; "
                        "NAMESPACE defaults to the module's last name (repeatable, or comma-separated)")
    p.add_argument("--debug", action="store_true", help="put tracebacks into error.details")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portbridge", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"portbridge {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    _add_worker_options(command("worker", "serve the protocol on stdin/stdout (what an Erlang Port spawns)"))

    call = command("call", "spawn a worker, send one request, print its events and its reply")
    call.add_argument("command", help="the command to send ('describe' lists them)")
    call.add_argument("--args", default="{}", metavar="JSON", help="the request's args as a JSON object (default {})")
    call.add_argument("--session", default=None, metavar="ID", help="session_id of the request (default: none)")
    call.add_argument("--format", choices=("json", "msgpack"), default="json",
                      help="format of the request frame (default %(default)s)")
    call.add_argument("--timeout-ms", type=_positive_int, default=None, metavar="MS",
                      help="the request's deadline: the worker answers 'timeout' after it (default: none)")
    call.add_argument("--wait", type=float, default=120.0, metavar="S",
                      help="seconds this command waits for the reply (default %(default)s)")

    repl = command("repl", "one worker; each input line is a request; replies print as they come")
    repl.add_argument("--format", choices=("json", "msgpack"), default="json",
                      help="format of the request frames (default %(default)s)")
    repl.add_argument("--pipeline", action="store_true", help="send every line at once instead of waiting for replies")

    enc = command("encode", "JSON lines on stdin -> frames on stdout")
    enc.add_argument("--format", choices=("json", "msgpack"), default="json",
                     help="format of the frames written (default %(default)s)")

    dec = command("decode", "a captured frame stream (either format, mixed) -> JSON lines")
    dec.add_argument("file", nargs="?", default="-", help="the file to read (default: stdin)")
    dec.add_argument("--verbose", "-v", action="store_true", help="show each frame's format and length")

    demo = command("demo", "run a DSPy program through real frames (the offline LM by default)")
    demo.add_argument("--model", default="offline",
                      help="DSPy model string, e.g. openai/gpt-4o-mini (default: the built-in offline LM)")
    demo.add_argument("--api-base", default=None, metavar="URL",
                      help="base URL of an OpenAI-compatible server for --model (default: the provider's)")
    return parser


def _worker_config(ns: argparse.Namespace) -> Any:
    from .limits import Limits
    from .worker import WorkerConfig

    limits = Limits(
        max_frame_bytes=ns.max_frame_bytes,
        max_frame_values=ns.max_frame_values,
        max_concurrency=ns.max_concurrency,
        max_queue=ns.max_queue,
        max_sessions=ns.max_sessions,
        session_ttl_s=ns.session_ttl,
        shutdown_grace_s=ns.shutdown_grace,
        max_callbacks=ns.max_callbacks,
    )
    backends = None if ns.backends is None else [b.strip() for b in ns.backends.split(",") if b.strip()]
    if ns.expose:
        from .sdk.expose import parse

        parse(ns.expose)  # a malformed --expose stops the worker before it says ready
    return WorkerConfig(
        fmt=ns.format,
        limits=limits,
        log_level=ns.log_level,
        log_format=ns.log_format,
        log_frames=ns.log_frames,
        quiet_stderr=ns.quiet_stderr,
        backends=backends,
        backend_modules=ns.backend_module,
        expose=ns.expose,
        debug=ns.debug,
    )


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """Everything after the first ``--`` is for the spawned worker."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our stdout went away (``portbridge decode | head``): stop quietly.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    argv, worker_args = _split_passthrough(list(sys.argv[1:] if argv is None else argv))
    ns = _parser().parse_args(argv)
    if worker_args and ns.cmd not in ("call", "repl", "demo"):
        _parser().error(f"'--' options are only for call, repl and demo, not {ns.cmd}")
    if ns.cmd == "worker":
        from .errors import RegistrationError
        from .worker import EXIT_USAGE, serve

        try:
            return serve(_worker_config(ns))
        except RegistrationError as exc:
            print(f"portbridge worker: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if ns.cmd == "call":
        from .devtools.interactive import call

        return call(ns.command, ns.args, ns.session, ns.format, ns.timeout_ms, ns.wait, worker_args)
    if ns.cmd == "repl":
        from .devtools.interactive import repl

        return repl(ns.format, ns.pipeline, worker_args)
    if ns.cmd == "encode":
        from .devtools.framecat import main_encode

        return main_encode(ns.format)
    if ns.cmd == "decode":
        from .devtools.framecat import main_decode

        return main_decode(ns.file, ns.verbose)
    if ns.cmd == "demo":
        from .devtools.demo import main as demo_main

        return demo_main(ns.model, ns.api_base, worker_args)
    raise AssertionError(ns.cmd)
