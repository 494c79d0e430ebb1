"""The ``portbridge`` command line.

    portbridge worker [options]             serve the protocol on stdin/stdout
    portbridge call COMMAND [--args JSON]   spawn a worker, send one request, print events and reply
    portbridge repl                         one worker, one request per input line
    portbridge encode [--format F]          JSON lines -> frames
    portbridge decode [FILE]                frames (either format, mixed) -> JSON lines
    portbridge demo                         a DSPy program driven through real frames, offline

``call``, ``repl`` and ``demo`` pass everything after ``--`` to the worker they spawn.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

FORMATS = ("auto", "json", "msgpack")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    from .limits import WORKER as D  # protocol/limits.json: the one home of these defaults

    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="frame format; auto detects each frame and answers in kind (default)")
    p.add_argument("--max-frame-bytes", type=_positive_int, default=D["max_frame_bytes"],
                   help="largest accepted frame payload (default %(default)s bytes)")
    p.add_argument("--max-frame-values", type=_positive_int, default=D["max_frame_values"],
                   help="most values one frame may decode to: array elements, map entries, containers "
                        "(default %(default)s; bounds the memory one request can take)")
    p.add_argument("--max-concurrency", type=_positive_int, default=D["max_concurrency"],
                   help="non-control requests running at once (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=D["max_queue"],
                   help="requests waiting beyond that before 'overloaded' (default %(default)s)")
    p.add_argument("--session-ttl", type=_non_negative_float, default=D["session_ttl_s"],
                   help="seconds an idle session is kept (default %(default)s)")
    p.add_argument("--max-sessions", type=_positive_int, default=D["max_sessions"],
                   help="sessions held at once (default %(default)s)")
    p.add_argument("--shutdown-grace", type=_non_negative_float, default=D["shutdown_grace_s"],
                   help="seconds in-flight work may finish at shutdown (default %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"), default="warning")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-frames", action="store_true", help="also forward log records as 'log' events")
    p.add_argument("--backends", default=None,
                   help="comma-separated installed plug-ins to load: backends, and modules of @command functions "
                        "by namespace (default: every installed one; '' for none)")
    p.add_argument("--backend-module", action="append", default=[], metavar="MODULE:ATTR",
                   help="also load the backend object at this import path (repeatable; for developing backends)")
    p.add_argument("--expose", action="append", default=[], metavar="MODULE[=NAMESPACE]",
                   help="serve the @command functions of this Python module (bridge.sdk) as NAMESPACE.function; "
                        "NAMESPACE defaults to the module's last name (repeatable, or comma-separated)")
    p.add_argument("--debug", action="store_true", help="put tracebacks into error.details")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portbridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"portbridge {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="serve the protocol on stdin/stdout (spawned by a Port)")
    _add_worker_options(worker)

    call = sub.add_parser("call", help="spawn a worker, send one request, print events and the reply")
    call.add_argument("command")
    call.add_argument("--args", default="{}", help="the request's args as JSON (default {})")
    call.add_argument("--session", default=None, help="session_id of the request")
    call.add_argument("--format", choices=("json", "msgpack"), default="json", help="format of the request frame")
    call.add_argument("--timeout-ms", type=_positive_int, default=None)
    call.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the reply (default 120)")

    repl = sub.add_parser("repl", help="one worker; each input line is a request; replies as they come")
    repl.add_argument("--format", choices=("json", "msgpack"), default="json")
    repl.add_argument("--pipeline", action="store_true", help="send every line at once instead of waiting for replies")

    enc = sub.add_parser("encode", help="JSON lines on stdin -> frames on stdout")
    enc.add_argument("--format", choices=("json", "msgpack"), default="json")

    dec = sub.add_parser("decode", help="a captured frame stream -> JSON lines")
    dec.add_argument("file", nargs="?", default="-")
    dec.add_argument("--verbose", "-v", action="store_true", help="show each frame's format and length")

    demo = sub.add_parser("demo", help="run a DSPy program through real frames on the offline LM")
    demo.add_argument("--model", default="offline", help="DSPy model string (default: the built-in offline LM)")
    demo.add_argument("--api-base", default=None)
    return parser


def _worker_config(ns: argparse.Namespace):
    from .limits import Limits
    from .worker import WorkerConfig

    limits = Limits(
        max_frame_bytes=ns.max_frame_bytes,
        max_frame_values=ns.max_frame_values,
        max_concurrency=ns.max_concurrency,
        max_queue=max(ns.max_queue, 0),
        max_sessions=ns.max_sessions,
        session_ttl_s=ns.session_ttl,
        shutdown_grace_s=ns.shutdown_grace,
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
        from .interactive import call

        return call(ns.command, ns.args, ns.session, ns.format, ns.timeout_ms, ns.wait, worker_args)
    if ns.cmd == "repl":
        from .interactive import repl

        return repl(ns.format, ns.pipeline, worker_args)
    if ns.cmd == "encode":
        from .framecat import main_encode

        return main_encode(ns.format)
    if ns.cmd == "decode":
        from .framecat import main_decode

        return main_decode(ns.file, ns.verbose)
    if ns.cmd == "demo":
        from .demo import main as demo_main

        return demo_main(ns.model, ns.api_base, worker_args)
    raise AssertionError(ns.cmd)
