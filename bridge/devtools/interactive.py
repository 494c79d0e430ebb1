"""``portbridge call`` and ``portbridge repl``: poke a real worker without writing a client.

Events print as one line each (``event chunk {...}``) when they arrive; final
replies print as indented JSON. ``call`` exits 1 on an error reply.

A repl line is either a whole request envelope as JSON (an ``id`` is added when
missing) or ``COMMAND [ARGS-JSON]``. ``:session S`` sets the session_id of the
lines that follow (``:session`` alone clears it); ``#`` starts a comment;
``help`` lists the commands the worker describes (backends' included) and
``help COMMAND`` shows one with its argument schema. On a terminal the repl
prompts (``portbridge>``, or ``portbridge[S]>`` in session S), keeps a history
and completes command names with TAB.
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


PROMPT = "portbridge> "
LOCAL = (":session", "help")  # what the repl itself understands (besides the worker's commands)


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


class Commands:
    """The commands the worker describes, fetched once, for help and completion."""

    def __init__(self, worker: WorkerClient) -> None:
        self._worker = worker
        self._described: dict | None = None

    def described(self) -> dict:
        if self._described is None:
            reply = self._worker.request("describe")
            self._described = reply["result"]["commands"] if reply.get("success") else {}
        return self._described

    def complete(self, text: str, state: int) -> str | None:
        """readline's completer: the ``state``-th name that starts with ``text`` (first word only)."""
        names = sorted([*self.described(), *LOCAL])
        matches = [name + " " for name in names if name.startswith(text)]
        return matches[state] if state < len(matches) else None

    def help(self, name: str = "") -> str:
        commands = self.described()
        if name:
            command = commands.get(name)
            if command is None:
                return f"no command {name!r}; 'help' lists them"
            kind = "control command (answered at once)" if command["control"] else "command"
            schema = "\n".join("    " + line for line in dumps(command["args"], pretty=True).splitlines())
            return f"{name}: {command['description']}\n  {kind} of backend {command['backend']}\n  args:\n{schema}"
        width = max(map(len, commands), default=0)
        backend_width = max((len(c["backend"]) for c in commands.values()), default=0)
        lines = [f"  {n:<{width}}  {c['backend']:<{backend_width}}  {c['description']}"
                 for n, c in sorted(commands.items())]
        return "\n".join([
            "commands of this worker:", *lines, "",
            "a line is COMMAND [ARGS-JSON] or a whole request envelope as JSON; 'help COMMAND' shows a "
            "command's arguments; ':session S' sets the session (':session' clears it); Ctrl-D quits.",
        ])


def _enable_completion(commands: Commands) -> None:
    try:
        import readline
    except ImportError:  # no readline on this platform: no history, no TAB
        return
    readline.set_completer(commands.complete)
    readline.set_completer_delims(" ")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")


def _lines(interactive: bool, prompt):
    """Input lines: prompted (readline's line editing) on a terminal, else read as they come."""
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield input(prompt())
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C clears the line, as in a shell
            sys.stdout.write("\n")


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
    commands = Commands(worker)
    with worker:
        if interactive:
            _enable_completion(commands)
            _out(f"portbridge {(worker.ready or {}).get('version')}: worker pid {worker.pid}, {len(commands.described())} "
                 "commands. Type 'help' for them; TAB completes; Ctrl-D quits.")
        for line in _lines(interactive, lambda: f"portbridge[{session}]> " if session else PROMPT):
            word = line.strip()
            if word.startswith(":session"):
                session = word[len(":session"):].strip() or None
                continue
            if word == "help" or word.startswith("help "):
                _out(commands.help(word[len("help"):].strip()))
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
