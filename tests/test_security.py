"""Security (issue 6, PROTOCOL.md section 12), proven on real workers.

1. Nothing from a client is evaluated, imported, unpickled, run or used as a
   path. Every command ``describe`` lists (core and DSPy alike) gets
   injection-shaped values in every string slot of its argument schema, in
   free-form maps' keys and values, and in the envelope (command, session,
   meta); pickles go as strings, MessagePack bin and ext values, and whole
   frames. An audit hook inside the worker (tests/support/introspection_backend)
   records every import, compile, exec, open, pickle, subprocess, os and
   socket event of the sweep: none may carry the injected text, no module may
   be imported, nothing may be unpickled or spawned. The worker runs with a
   fresh HOME, TMPDIR and working directory, which must not change.
2. A canary API key, used for real against the loopback OpenAI-compatible
   server (success, 401, 500, garbage, unparseable; plain and streamed),
   appears in no reply, event, log event, stats, describe, export, error
   detail, --debug traceback, or stderr log line (text and JSON).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle

import msgpack
import orjson
import pytest

from bridge.framing import encode_frame
from bridge.processes import alive as pid_alive
from tests.support.openai_server import OpenAIServer
from tests.support.workers import RawWorker, worker_env

MARK = "pbq7x"  # in every injected string that could be looked for in an audit event


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch pwned_{MARK}",))


PICKLES = [pickle.dumps(_Evil(), protocol=p) for p in (0, 2, 5)]
INJECTIONS = [
    "os.system", "subprocess.Popen", "builtins.eval", "__import__", "__class__", "__globals__", "__builtins__",
    "__reduce__", "__subclasses__", "__init__", "dspy.ReAct", "dspy.ProgramOfThought", "pickle.loads",
    f"{MARK}_module", f"os.path.{MARK}", f"__import__('{MARK}_module')", f"__import__('os').system('touch pwned_{MARK}')",
    f"eval('open(\"{MARK}\", \"w\")')", f"{{{{7*7}}}}{MARK}", f"${{7*7}}{MARK}", f"$(touch pwned_{MARK})",
    f"`touch pwned_{MARK}`", f"%s%s%n{MARK}",
    "../../etc/passwd", "/etc/passwd", f"../../{MARK}_file", f"/tmp/{MARK}_file", "~/.ssh/id_rsa", "file:///etc/passwd",
    "question: os.system -> answer", f"question: {MARK}_module -> answer", f"q -> a: __import__('{MARK}')",
    f"{MARK}: subprocess.Popen", f"http://127.0.0.1:9/{MARK}",
    *(p.decode("latin-1") for p in PICKLES),
    base64.b64encode(PICKLES[1]).decode(),
]
# Audit events that may never happen while input is being handled.
NEVER = ("pickle.find_class", "marshal.loads", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
         "subprocess.Popen", "ctypes.", "socket.connect", "webbrowser.open", "os.remove", "os.rename", "os.mkdir",
         "os.rmdir", "os.unlink", "os.chmod", "os.truncate", "os.symlink", "os.link", "shutil.")
TELLTALES = (MARK, "passwd", "id_rsa", "pwned", "os.system", "subprocess.Popen", "__import__(")
SKIP = {"shutdown", "audit_start", "audit_take"}
# The embeddings backend stands for every module exposed through bridge.sdk (commands whose schemas
# and conversions are derived from type hints).
INTROSPECTION = ("--backend-module", "tests.support.introspection_backend:backend",
                 "--expose", "bridge.backends.embeddings")
QA = "question -> answer"


# -- argument values from schemas -------------------------------------------------------------


def _base(schema: dict):
    """A minimal value the schema accepts (as far as a generic reading can tell)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return _base(schema["anyOf"][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return {name: _base(schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array":
        return [_base(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "p1"


def _slots(schema: dict, path: tuple = ()):
    """Paths where a string may go: string-typed, enum/const/untyped values, and free-form maps
    (``"*"`` = a new entry, key and value both injected)."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    branches = schema.get("anyOf", [])
    if "object" in kinds or any(b.get("type") == "object" for b in branches):
        props = schema.get("properties") or next((b.get("properties") for b in branches if b.get("properties")), {})
        for name, sub in props.items():
            yield from _slots(sub, (*path, name))
        if schema.get("additionalProperties", True) is not False:
            yield (*path, "*")
    if "array" in kinds:
        yield from _slots(schema.get("items", {}), (*path, 0))
    if not kinds or "string" in kinds or "enum" in schema or "const" in schema or \
            any(b.get("type") == "string" for b in branches):
        if path:
            yield path


def _leaves(value, path: tuple = ()):
    """Paths of the strings already in a base value (the fields of free-form maps such as inputs)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    elif isinstance(value, str) and path:
        yield path


def _put(base, path: tuple, value):
    doc = copy.deepcopy(base)
    here = doc
    for i, step in enumerate(path[:-1]):
        nxt = path[i + 1]
        empty = [] if isinstance(nxt, int) else {}
        if isinstance(here, list):
            while len(here) <= step:
                here.append(copy.deepcopy(empty))
            if not isinstance(here[step], (dict, list)):
                here[step] = empty
        elif not isinstance(here.get(step), (dict, list)):
            here[step] = empty
        here = here[step]
    last = path[-1]
    if last == "*":
        here[value if isinstance(value, str) else repr(value)] = value
    elif isinstance(here, list):
        while len(here) <= last:
            here.append(None)
        here[last] = value
    else:
        here[last] = value
    return doc


# -- the sweep ---------------------------------------------------------------------------------


def _fresh_env(tmp_path):
    dirs = {name: tmp_path / name for name in ("home", "tmp", "cwd")}
    for d in dirs.values():
        d.mkdir()
    env = worker_env(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), XDG_CACHE_HOME=str(dirs["home"] / ".cache"))
    for key in [k for k in env if k.endswith(("_API_KEY", "_API_BASE"))]:
        del env[key]
    return dirs, env


def _tree(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, dirs, files in os.walk(folder) for name in dirs + files)


class Sweeper:
    def __init__(self, worker: RawWorker) -> None:
        self.w = worker
        self.n = 0
        self.replies: list[dict] = []

    def send(self, command: str, args=None, fmt: str = "json", **envelope) -> dict:
        self.n += 1
        doc = {"id": self.n, "command": command, **envelope}
        if args is not None:
            doc["args"] = args
        reply = self.w.request(doc, fmt=fmt, timeout=60)
        assert reply is not None and reply["id"] == self.n, reply
        self.replies.append(reply)
        return reply

    def ok(self, command: str, args=None, **envelope):
        reply = self.send(command, args, **envelope)
        assert reply["success"], reply
        return reply["result"]


def _bases(commands: dict, export: dict | None) -> dict:
    """Base args per command: the schema's minimum, made realistic enough to reach the handlers."""
    bases = {name: _base(info["args"]) for name, info in commands.items()}
    overrides = {
        "create_program": {"signature": QA, "program_id": "p1", "replace": True},
        "execute_program": {"program_id": "warm", "inputs": {"question": "q"}},
        "optimize_program": {"program_id": "warm", "optimizer": "LabeledFewShot",
                             "trainset": [{"inputs": {"question": "q"}, "outputs": {"answer": "a"}}]},
        "evaluate_program": {"program_id": "warm",
                             "devset": [{"inputs": {"question": "q"}, "outputs": {"answer": "a"}}]},
        "import_program": {"program": export, "program_id": "imported", "replace": True},
        "configure_lm": {"model": "offline"},
        "sleep": {"ms": 0},
        "get_program": {"program_id": "warm"},
        "export_program": {"program_id": "warm"},
        "delete_program": {"program_id": "warm"},
        "configure_embedder": {"model": "offline"},
        "create_index": {"corpus": ["a passage"], "index_id": "i1", "replace": True},
        "retrieve": {"index_id": "warm-index", "query": "q"},
        "delete_index": {"index_id": "warm-index"},
    }
    for name, base in overrides.items():
        if name in bases and base is not None:
            bases[name] = base
    return bases


def test_no_input_is_imported_evaluated_unpickled_run_or_used_as_a_path(tmp_path):
    dirs, env = _fresh_env(tmp_path)
    w = RawWorker(*INTROSPECTION, env=env, cwd=str(dirs["cwd"]), stderr_path=str(tmp_path / "worker.stderr"))
    try:
        s = Sweeper(w)
        commands = s.ok("describe")["commands"]
        assert {"audit_start", "audit_take"} <= set(commands)
        has_dspy = "create_program" in commands
        export = None
        # Warm-up, before the audit: every lazy import and first-use file the commands need.
        sessions = {name: f"sweep-{name}" for name in commands}
        if has_dspy:
            s.ok("configure_lm", {"model": "offline"})
            for session in sessions.values():
                s.ok("create_program", {"signature": QA, "program_id": "warm"}, session_id=session)
            s.ok("execute_program", {"program_id": "warm", "inputs": {"question": "q"}}, session_id=sessions["echo"])
            s.ok("execute_program", {"program_id": "warm", "inputs": {"question": "q"}, "stream": True},
                 session_id=sessions["echo"])
            export = s.ok("export_program", {"program_id": "warm"}, session_id=sessions["echo"])["program"]
            s.ok("import_program", {"program": export, "program_id": "w2"}, session_id=sessions["echo"])
            s.ok("optimize_program", _bases(commands, export)["optimize_program"], session_id=sessions["echo"])
            s.ok("evaluate_program", _bases(commands, export)["evaluate_program"], session_id=sessions["echo"])
            s.ok("lm_usage", session_id=sessions["echo"])
            s.ok("configure_embedder", {"model": "offline"})
            # A provider embedder imports litellm; no embedding call is made.
            s.ok("configure_embedder", {"model": "openai/warm", "api_base": "http://127.0.0.1:9/v1"},
                 session_id=sessions["configure_embedder"])
            s.ok("create_index", {"corpus": ["warm"], "index_id": "warm-index"})
            s.ok("retrieve", {"index_id": "warm-index", "query": "q"}, session_id=sessions["echo"])
        assert "embeddings.search" in commands
        warm = {"query": "warm", "queries": ["warm"], "texts": ["warm"], "documents": [{"id": "w", "text": "warm"}]}
        for name in ("embeddings.search", "embeddings.search_many"):  # a corpus to search while swept
            s.ok("embeddings.add", {"documents": warm["documents"]}, session_id=sessions[name])
        for name, info in commands.items():
            if name.startswith("embeddings."):
                s.ok(name, {k: warm[k] for k in info["args"].get("required", [])}, session_id=sessions[name])
        for name in ("stats", "health", "list_sessions", "ping"):
            s.ok(name)
        s.send("no_such_command")
        s.send("sleep", {"ms": "x"})
        w.send(encode_frame(b"{not json"))
        assert w.read_reply()["error"]["code"] == "undecodable"
        before = {name: _tree(d) for name, d in dirs.items()}

        s.ok("audit_start")
        bases = _bases(commands, export)
        for name, info in sorted(commands.items()):
            if name in SKIP:
                continue
            slots = list(dict.fromkeys([*_slots(info["args"]), *_leaves(bases[name])]))
            for inj in INJECTIONS:
                for slot in slots:
                    s.send(name, _put(bases[name], slot, inj), session_id=sessions[name])
                s.send(name, {**bases[name], inj: inj}, session_id=sessions[name])
            for blob in (*PICKLES, msgpack.ExtType(1, PICKLES[1])):
                args = bases[name]
                for slot in slots:
                    args = _put(args, slot, blob)
                s.send(name, args, fmt="msgpack", session_id=sessions[name])
        for inj in INJECTIONS:
            s.send(inj[:128] or "x")
            s.send("ping", session_id=inj[:256])
            s.send("echo", {"x": inj}, meta={inj[:64]: inj, "trace_id": inj})
            s.send("list_programs", session_id=inj[:256]) if has_dspy else None
        for payload in PICKLES:
            w.send(encode_frame(payload))
            assert w.read_reply()["error"]["category"] == "protocol"
        audit = s.ok("audit_take")

        assert audit["imported"] == [], f"modules imported while handling input: {audit['imported']}"
        forbidden = [e for e in audit["events"] if e[0].startswith(NEVER)]
        assert not forbidden, f"forbidden events while handling input: {forbidden[:10]}"
        tainted = [e for e in audit["events"] if any(t in e[1] for t in TELLTALES)]
        assert not tainted, f"audit events carrying client input: {tainted[:10]}"
        opened = sorted({e[1].split(",")[0] for e in audit["events"] if e[0] == "open"})
        assert not [p for p in opened if any(str(d) in p for d in dirs.values())], opened

        s.send("shutdown")
        assert w.wait(20) == 0
        after = {name: _tree(d) for name, d in dirs.items()}
        assert after == before, f"files appeared or vanished: {before} -> {after}"
        assert not [p for p in os.listdir("/tmp") if MARK in p or "pwned" in p]
        replies = json.dumps([r for r in s.replies], default=repr)
        assert "Traceback" not in replies
        print(f"swept {s.n} requests over {len(commands) - len(SKIP & set(commands))} commands; "
              f"{len(audit['events'])} audit events, files opened: {opened}")
    finally:
        w.kill()
        assert not pid_alive(w.pid)


# -- secrets -----------------------------------------------------------------------------------

CANARY = "sk-canary-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"
FRAGMENTS = (CANARY, CANARY[3:21], CANARY[-16:])  # a masked-looking prefix/suffix alone is not the key


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_canary_api_key_reaches_no_output_channel(tmp_path, log_format):
    with OpenAIServer(api_key=CANARY) as server:
        dirs, env = _fresh_env(tmp_path)
        w = RawWorker("--debug", "--log-frames", "--log-level", "debug", "--log-format", log_format,
                      "--backend-module", "tests.support.misbehaving_backend:backend",
                      env=env, cwd=str(dirs["cwd"]), stderr_path=str(tmp_path / "worker.stderr"))
        frames: list[dict] = []
        try:
            n = 0

            def send(command, args=None, **envelope):
                nonlocal n
                n += 1
                events: list = []
                w.send_doc({"id": n, "command": command, "args": args or {}, **envelope})
                reply = w.read_reply(timeout=60, events=events)
                frames.extend([*events, reply])
                return reply

            assert send("describe")["success"]
            if "configure_lm" not in send("describe")["result"]["commands"]:
                pytest.skip("the DSPy backend is not installed")
            models = ["m1", "fail-401", "fail-500", "garbage", "unparseable"]
            for model in models:
                sid = f"s-{model}"
                configured = send("configure_lm", {"model": f"openai/{model}", "api_key": CANARY,
                                                   "api_base": server.base_url, "num_retries": 0}, session_id=sid)
                assert configured["success"] and configured["result"]["api_key_set"] is True, configured
                send("create_program", {"signature": QA, "program_id": "qa", "module": "ChainOfThought"},
                     session_id=sid)
                for stream in (False, True):
                    send("execute_program", {"program_id": "qa", "inputs": {"question": "what is the key?"},
                                             "stream": stream}, session_id=sid)
                for command in ("export_program", "get_program"):
                    send(command, {"program_id": "qa"}, session_id=sid)
                for command in ("list_programs", "lm_usage"):
                    send(command, session_id=sid)
            ok = [f for f in frames if f.get("success") and "answer" in str(f.get("result"))]
            assert ok, "the key must have worked for the m1 session"
            failures = {f["error"]["category"] for f in frames if f.get("success") is False}
            assert {"lm_auth", "lm_unavailable"} <= failures, failures
            send("configure_lm", {"model": "openai/o1-mini", "api_key": CANARY, "temperature": 0.3}, session_id="x")
            send("configure_lm", {"model": "offline", "api_key": CANARY}, session_id="y")
            # A careless backend logs the key and raises with it: masked only because configure_lm
            # registered it (the leak command does not).
            leaked = send("leak", {"secret": CANARY, "register": False})
            assert "***" in leaked["error"]["message"] and "Traceback" in leaked["error"]["details"]["traceback"]
            send("echo", {"headers": {"Authorization": f"Bearer {CANARY}"}, "x": 1}, session_id="z")
            send("sleep", {"ms": "slow", "api_key": CANARY})
            for command in ("stats", "health", "list_sessions", "describe"):
                send(command)
            send("shutdown")
            assert w.wait(20) == 0
            assert any(s.authorization == f"Bearer {CANARY}" for s in server.seen), "the key went to the provider"
        finally:
            w.kill()
        echo = [f for f in frames if f.get("result", {}) and "headers" in str(f.get("result"))]
        channels = {
            "replies and events": json.dumps([f for f in frames if f not in echo], default=repr),
            "log events": json.dumps([f for f in frames if f.get("event") == "log"]),
            "stderr": w.stderr_text(),
        }
        assert '"event": "log"' in channels["replies and events"] and "Traceback" in channels["replies and events"]
        assert "Traceback" in channels["stderr"]
        if log_format == "json":
            assert all(orjson.loads(line) for line in channels["stderr"].splitlines() if line.startswith("{"))
        for name, text in channels.items():
            for fragment in FRAGMENTS:
                assert fragment not in text, f"the canary key leaked into {name}: ...{_around(text, fragment)}..."


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(i - 300, 0) : i + len(needle) + 100]
