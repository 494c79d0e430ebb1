"""A test backend that watches the worker from inside: Python audit events and sys.modules.

Loaded with ``--backend-module tests.support.introspection_backend:backend``
(only by tests). At load it installs an audit hook (PEP 578) that records the
events through which input could be evaluated, imported, unpickled, run or
used as a path: ``import``, ``compile``, ``exec``, ``open``, ``pickle.*``,
``marshal.*``, ``os.*`` (system, exec, spawn, remove, rename, listdir...),
``subprocess.*``, ``shutil.*``, ``socket.*``, ``ctypes.*``... Recording is off
until ``audit_start`` and stops at ``audit_take``, which returns every event
of the window (name and a short rendering of its arguments) and the modules
imported meanwhile. Audit events miss one thing: ``importlib.import_module``
of a name that does not exist raises no event, so the backend also puts a
finder first on ``sys.meta_path`` and wraps ``builtins.__import__`` and
``importlib.import_module``: every import attempt of the window is recorded
as an ``import.attempt`` event with the name asked for. Both are control commands: they answer at once, in order
with the frames around them.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import threading

from bridge.backends import Backend

WATCHED = ("import", "compile", "exec", "open", "pickle.", "marshal.", "os.", "subprocess.", "shutil.",
           "socket.", "ctypes.", "code.", "builtins.input", "urllib.", "http.", "webbrowser.", "glob.",
           "tempfile.", "sqlite3.", "syslog.")
IGNORED = ("sys._getframe", "os.getenv", "os.putenv", "os.unsetenv")  # everyday reads, no input involved
_state = {"on": False, "events": [], "modules": frozenset()}
_lock = threading.Lock()


def _render(args) -> str:
    parts = []
    for arg in args:
        code = getattr(arg, "co_filename", None)
        if code is not None:  # a code object: where it comes from, and the constants it carries
            consts = [c for c in getattr(arg, "co_consts", ()) if isinstance(c, (str, bytes))]
            parts.append(f"<code {arg.co_name} of {code} consts={consts!r:.300}>")
        else:
            parts.append(repr(arg)[:300])
    return ", ".join(parts)


def _hook(name: str, args) -> None:
    if not _state["on"] or not name.startswith(WATCHED) or name.startswith(IGNORED):
        return
    try:
        rendered = _render(args)
    except Exception:  # never let the hook itself fail a call
        rendered = "<unrenderable>"
    _record(name, rendered)


def _record(name: str, rendered: str) -> None:
    with _lock:
        if len(_state["events"]) < 100_000:
            _state["events"].append([name, rendered, threading.current_thread().name])


class _AttemptFinder:
    """First on sys.meta_path: sees every import of a module not yet loaded, found or not."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if _state["on"]:
            _record("import.attempt", repr(name))
        return None


def _watching(real):
    def wrapper(name, *args, **kwargs):
        if _state["on"]:
            _record("import.attempt", repr(name)[:300])
        return real(name, *args, **kwargs)

    return wrapper


sys.addaudithook(_hook)
sys.meta_path.insert(0, _AttemptFinder())
builtins.__import__ = _watching(builtins.__import__)
importlib.import_module = _watching(importlib.import_module)


class Introspection(Backend):
    name = "introspection"

    def register(self, registry) -> None:
        registry.command("audit_start", control=True, backend=self.name)(audit_start)
        registry.command("audit_take", control=True, backend=self.name)(audit_take)


def audit_start(ctx, args) -> dict:
    """Forget earlier events, snapshot sys.modules, start recording."""
    with _lock:
        _state["events"] = []
        _state["modules"] = frozenset(sys.modules)
        _state["on"] = True
    return {"recording": True}


def audit_take(ctx, args) -> dict:
    """Stop recording; the events of the window and the modules imported in it."""
    with _lock:
        _state["on"] = False
        events, _state["events"] = _state["events"], []
        imported = sorted(set(sys.modules) - _state["modules"])
    return {"events": events, "imported": imported}


backend = Introspection()
