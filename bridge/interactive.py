"""``portbridge call`` and ``portbridge repl``: poke a real worker without writing a client.

Events print as one line each (``event chunk {...}``) when they arrive; final
replies print as indented JSON. ``call`` exits 1 on an error reply.

A repl line is either a whole request envelope as JSON (an ``id`` is added when
missing) or ``COMMAND [ARGS-JSON]``. ``:session S`` sets the session_id of the
lines that follow (``:session`` alone clears it); ``#`` starts a comment.
"""

from __future__ import annotations

import sys
import threading

import orjson

from .client import WorkerClient, WorkerExited
from .framecat import dumps

_print_lock = threading.Lock()


def _out(text: str) -> None:
    with _print_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def print_event(frame: dict) -> None:
    _out(f"event {frame.get('event')} id={frame.get('id')} {dumps(frame.get('data'))}")


def print_reply(frame: dict | None) -> None:
    _out(dumps(frame, pretty=True) if frame is not None else "(no reply: the worker exited)")


def _parse_json_args(text: str) -> dict:
    try:
        args = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"--args is not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise SystemExit("--args must be a JSON object")
    return args


def call(command, args_json, session, fmt, timeout_ms, wait, worker_args) -> int:
    args = _parse_json_args(args_json)
    try:
        with WorkerClient(worker_args, fmt=fmt, on_worker_event=_log_event) as worker:
            reply = worker.request(
                command, args, session_id=session, timeout_ms=timeout_ms, wait=wait, on_event=print_event
            )
    except (WorkerExited, TimeoutError) as exc:
        print(f"portbridge call: {exc}", file=sys.stderr)
        return 2
    print_reply(reply)
    return 0 if reply.get("success") else 1


def _log_event(frame: dict) -> None:
    if frame.get("event") == "log":
        print_event(frame)


def parse_line(line: str, session: str | None):
    """A repl line -> (command, args, envelope extras), or None for blank and comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("{"):
        doc = orjson.loads(line)
        extras = {k: doc[k] for k in ("session_id", "timeout_ms", "meta", "rid") if k in doc}
        if "id" in doc:
            extras["rid"] = doc["id"]
        extras.setdefault("session_id", session)
        return doc.get("command"), doc.get("args", {}), extras
    command, _, rest = line.partition(" ")
    args = orjson.loads(rest) if rest.strip() else {}
    return command, args, {"session_id": session}


def repl(fmt: str, pipeline: bool, worker_args) -> int:
    interactive = sys.stdin.isatty()
    session = None
    failures = 0
    pending = []
    try:
        worker = WorkerClient(worker_args, fmt=fmt, on_worker_event=_log_event)
    except WorkerExited as exc:
        print(f"portbridge repl: {exc}", file=sys.stderr)
        return 2
    with worker:
        if interactive:
            _out(f"portbridge worker pid {worker.pid}; commands: {', '.join(worker.ready['commands'])}")
        for line in sys.stdin:
            if line.startswith(":session"):
                session = line[len(":session"):].strip() or None
                continue
            try:
                parsed = parse_line(line, session)
            except orjson.JSONDecodeError as exc:
                _out(f"not JSON: {exc}")
                failures += 1
                continue
            if parsed is None:
                continue
            command, args, extras = parsed
            try:
                p = worker.submit(command, args, on_event=print_event, **extras)
            except WorkerExited as exc:
                _out(f"worker gone: {exc}")
                return 2
            if pipeline:
                printer = threading.Thread(target=lambda p=p: print_reply(p.wait(None)), daemon=True)
                printer.start()
                pending.append((p, printer))
                continue
            reply = p.wait(None)
            print_reply(reply)
            failures += not (reply or {}).get("success", False)
        for p, printer in pending:
            printer.join()
            failures += not (p.reply or {}).get("success", False)
    return 1 if failures else 0

