"""The framework-agnostic commands every worker has.

Control commands (answered inline, even under load): ping, describe, stats,
health, cancel, list_sessions, end_session, shutdown. Scheduled diagnostics
that clients, tests and benchmarks rely on: echo (returns its args unchanged,
any size, any format) and sleep (waits like a slow backend call, honouring
deadlines and cancel).

The commands that manage the worker get the narrow ``Control`` interface when
they are registered (the worker's runtime provides it); like every handler they
see their request only through the ``Context``. ``ready_data`` is what the
worker announces itself with: the part of ``describe`` known before backends
register.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from . import __version__, codecs, envelope
from .callbacks import Callbacks
from .context import Context
from .errors import categories, validation_error
from .limits import Limits
from .registry import ANY_ARGS, Registry
from .sessions import SessionTable
from .stats import Stats

MAX_SLEEP_MS = envelope.MAX_TIMEOUT_MS
ID_SCHEMA = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string", "minLength": 1, "maxLength": envelope.MAX_ID_CHARS},
    ],
    "description": "the id of the request to cancel",
}
CALLBACK_RESULT = {
    "type": "object",
    "properties": {
        "callback_id": {"type": "string", "minLength": 1, "maxLength": 64,
                        "description": "the callback_id of the callback event answered"},
        "result": {"description": "what the callback returned: any value the frame's format carries"},
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "maxLength": 100_000, "description": "what went wrong, for humans"},
                "category": {"enum": sorted(categories()),
                             "description": "a category of errors.json (default execution)"},
            },
            "required": ["message"],
            "additionalProperties": False,
            "description": "the callback failed; the request's handler gets this category",
        },
    },
    "required": ["callback_id"],
    "additionalProperties": False,
    "description": "exactly one of result and error",
}
# Backends register just after ready (tens of ms): a describe sent at once
# waits for them rather than listing the core alone.
REGISTRATION_WAIT_S = 30.0


class Control(Protocol):
    """What the core's control commands need of the worker, and nothing more."""

    registry: Registry
    backends: dict
    limits: Limits
    stats: Stats
    sessions: SessionTable
    callbacks: Callbacks
    accepting: bool

    def load(self) -> dict:
        """``in_flight``, ``running``, ``queued``, ``threads``, ``sessions``, ``timers``."""
        ...

    def cancel(self, rid: Any) -> str:
        """Answer request ``rid`` with ``cancelled``; its state before ('unknown' if none)."""
        ...

    def end_session(self, session_id: str) -> int:
        """Cancel the session's requests and drop it; how many were cancelled (raises not_found)."""
        ...

    def shutdown(self, reason: str) -> None:
        """Start the worker's one shutdown path."""
        ...


PID = os.getpid()  # the worker never forks; os.getpid() is a system call per ping


def ping(ctx: Context, args: dict) -> dict:
    """Answer at once: the worker is alive and reading."""
    return {"pong": True, "pid": PID}


def echo(ctx: Context, args: dict) -> dict:
    """Return the args unchanged (any size, any format)."""
    return args


def sleep(ctx: Context, args: dict) -> dict:
    """Wait args.ms milliseconds like a slow backend call; stops early on cancel or deadline."""
    ctx.wait(args["ms"] / 1000)
    return {"slept_ms": args["ms"]}


def _identity(limits: Limits) -> dict:
    """What ``ready`` and ``describe`` both say of the worker."""
    return {
        "protocol": envelope.PROTOCOL_VERSION,
        "protocol_minor": envelope.PROTOCOL_MINOR,
        "features": list(envelope.FEATURES),
        "version": __version__,
        "formats": list(codecs.FORMATS),
        "limits": limits.describe(),
    }


def ready_data(registry: Registry, limits: Limits, fmt: str) -> dict:
    """The data of the ``ready`` event (``fmt``: the worker's --format)."""
    return {
        **_identity(limits),
        "pid": PID,
        "format": fmt,
        # The commands answerable now: the core ones. Backends register just
        # after ready (see worker.py); ``describe`` lists everything.
        "commands": registry.names(),
    }


def register(registry: Registry, control: Control) -> None:
    """Register the core commands; those that manage the worker do it through ``control``."""
    command = registry.command

    @command("describe", control=True)
    def describe(ctx: Context, args: dict) -> dict:
        """Commands with their argument schemas, backends, formats and limits."""
        registry.complete.wait(REGISTRATION_WAIT_S)
        return {
            **_identity(control.limits),
            "commands": {name: registry.commands[name].describe() for name in registry.names()},
            "backends": {name: {"name": name, **b.describe()} for name, b in control.backends.items()},
        }

    @command("stats", control=True)
    def stats(ctx: Context, args: dict) -> dict:
        """Counts per command and error category, latency percentiles, load, sessions, uptime, RSS."""
        return {**control.stats.snapshot(), **control.load()}

    @command("health", control=True)
    def health(ctx: Context, args: dict) -> dict:
        """ok, starting (backends still registering), degraded (a backend failed) or shutting_down."""
        backends = {name: b.status() for name, b in control.backends.items()}
        if not control.accepting:
            status = "shutting_down"
        elif not registry.complete.is_set():
            status = "starting"
        elif any(b.get("state") == "failed" for b in backends.values()):
            status = "degraded"
        else:
            status = "ok"
        load = control.load()
        return {
            "status": status,
            "accepting": control.accepting,
            "backends": backends,
            "in_flight": load["in_flight"],
            "queued": load["queued"],
            "uptime_s": round(control.stats.uptime_s(), 3),
        }

    @command("cancel", control=True, schema={
        "type": "object",
        "properties": {"request_id": ID_SCHEMA},
        "required": ["request_id"],
        "additionalProperties": False,
    })
    def cancel(ctx: Context, args: dict) -> dict:
        """Answer another request with 'cancelled' at once; reports its state before."""
        rid = args["request_id"]
        if rid == ctx.request_id:
            raise validation_error("cancel_self", "a cancel request cannot cancel itself")
        state = control.cancel(rid)
        return {"request_id": rid, "cancelled": state in ("queued", "running"), "state": state}

    @command("list_sessions", control=True)
    def list_sessions(ctx: Context, args: dict) -> dict:
        """The sessions this worker holds."""
        sessions = control.sessions.describe()
        return {"sessions": sessions, "count": len(sessions)}

    @command("end_session", control=True, schema={
        "type": "object",
        "properties": {
            "session_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": envelope.MAX_SESSION_ID_CHARS,
                "description": "the session to end; defaults to the envelope's session_id",
            }
        },
        "additionalProperties": False,
    })
    def end_session(ctx: Context, args: dict) -> dict:
        """Cancel a session's requests and free its store at once."""
        session_id = args.get("session_id") or ctx.session_id
        if session_id is None:
            raise validation_error("missing_session_id", "name the session in args.session_id or the envelope")
        cancelled = control.end_session(session_id)
        return {"session_id": session_id, "ended": True, "cancelled_requests": cancelled}

    @command("callback_result", control=True, schema=CALLBACK_RESULT)
    def callback_result(ctx: Context, args: dict) -> dict:
        """The client's answer to a callback event: its result, or the error it raised."""
        if "result" in args:
            control.callbacks.answer(args["callback_id"], result=args["result"], error=args.get("error"))
        else:
            control.callbacks.answer(args["callback_id"], error=args.get("error"))
        return {"callback_id": args["callback_id"], "accepted": True}

    @command("shutdown", control=True)
    def shutdown(ctx: Context, args: dict) -> dict:
        """Stop taking work, let in-flight work finish within the grace period, exit 0."""
        control.shutdown("shutdown command")
        return {"shutting_down": True, "grace_s": control.limits.shutdown_grace_s}

    command("ping", control=True)(ping)
    command("echo", schema=ANY_ARGS)(echo)
    command("sleep", schema={
        "type": "object",
        "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
        "required": ["ms"],
        "additionalProperties": False,
    })(sleep)
