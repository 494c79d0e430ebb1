"""The framework-agnostic commands every worker has.

Control commands (answered inline, even under load): ping, describe, stats,
health, cancel, list_sessions, end_session, shutdown. Scheduled diagnostics
that clients, tests and benchmarks rely on: echo (returns its args unchanged,
any size, any format) and sleep (waits like a slow backend call, honouring
deadlines and cancel).
"""

from __future__ import annotations

import os

from . import __version__, codecs, envelope
from .context import Context
from .errors import validation_error
from .registry import ANY_ARGS, Registry

MAX_SLEEP_MS = 24 * 3600 * 1000
ID_SCHEMA = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string", "minLength": 1, "maxLength": envelope.MAX_ID_CHARS},
    ],
    "description": "the id of the request to cancel",
}


def register(registry: Registry) -> None:
    registry.command("ping", control=True)(ping)
    registry.command("describe", control=True)(describe)
    registry.command("stats", control=True)(stats)
    registry.command("health", control=True)(health)
    registry.command(
        "cancel",
        control=True,
        schema={
            "type": "object",
            "properties": {"request_id": ID_SCHEMA},
            "required": ["request_id"],
            "additionalProperties": False,
        },
    )(cancel)
    registry.command("list_sessions", control=True)(list_sessions)
    registry.command(
        "end_session",
        control=True,
        schema={
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
        },
    )(end_session)
    registry.command("shutdown", control=True)(shutdown)
    registry.command("echo", schema=ANY_ARGS)(echo)
    registry.command(
        "sleep",
        schema={
            "type": "object",
            "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
            "required": ["ms"],
            "additionalProperties": False,
        },
    )(sleep)


PID = os.getpid()  # the worker never forks; os.getpid() is a system call per ping


def ping(ctx: Context, args: dict) -> dict:
    """Answer at once: the worker is alive and reading."""
    return {"pong": True, "pid": PID}


REGISTRATION_WAIT_S = 30.0


def describe(ctx: Context, args: dict) -> dict:
    """Commands with their argument schemas, backends, formats and limits."""
    d = ctx.dispatcher
    # Backends register just after ready (tens of ms): a describe sent at once
    # waits for them rather than listing the core alone.
    d.registry.complete.wait(REGISTRATION_WAIT_S)
    return {
        "protocol": envelope.PROTOCOL_VERSION,
        "version": __version__,
        "formats": list(codecs.FORMATS),
        "commands": {name: d.registry.commands[name].describe() for name in d.registry.names()},
        "backends": {name: {"name": name, **b.describe()} for name, b in d.backends.items()},
        "limits": d.describe_limits(),
    }


def stats(ctx: Context, args: dict) -> dict:
    """Counts per command and error category, latency percentiles, load, sessions, uptime, RSS."""
    d = ctx.dispatcher
    return {
        **d.stats.snapshot(),
        "in_flight": len(d.jobs()),  # control requests (this one) are never in flight
        "running": d.scheduler.running,
        "queued": d.scheduler.queued,
        "threads": d.scheduler.threads,
        "sessions": len(d.sessions),
        "timers": len(d.timers),
    }


def health(ctx: Context, args: dict) -> dict:
    """ok, starting (backends still registering), degraded (a backend failed) or shutting_down."""
    d = ctx.dispatcher
    backends = {name: b.status() for name, b in d.backends.items()}
    if not d.accepting:
        status = "shutting_down"
    elif not d.registry.complete.is_set():
        status = "starting"
    elif any(b.get("state") == "failed" for b in backends.values()):
        status = "degraded"
    else:
        status = "ok"
    return {
        "status": status,
        "accepting": d.accepting,
        "backends": backends,
        "in_flight": len(d.jobs()),
        "queued": d.scheduler.queued,
        "uptime_s": round(d.stats.uptime_s(), 3),
    }


def cancel(ctx: Context, args: dict) -> dict:
    """Answer another request with 'cancelled' at once; reports its state before."""
    rid = args["request_id"]
    if rid == ctx.request_id:
        raise validation_error("cancel_self", "a cancel request cannot cancel itself")
    state = ctx.dispatcher.cancel(rid)
    return {"request_id": rid, "cancelled": state in ("queued", "running"), "state": state}


def list_sessions(ctx: Context, args: dict) -> dict:
    """The sessions this worker holds."""
    sessions = ctx.dispatcher.sessions.describe()
    return {"sessions": sessions, "count": len(sessions)}


def end_session(ctx: Context, args: dict) -> dict:
    """Cancel a session's requests and free its store at once."""
    session_id = args.get("session_id") or ctx.session_id
    if session_id is None:
        raise validation_error("missing_session_id", "name the session in args.session_id or the envelope")
    cancelled = ctx.dispatcher.end_session(session_id)
    return {"session_id": session_id, "ended": True, "cancelled_requests": cancelled}


def shutdown(ctx: Context, args: dict) -> dict:
    """Stop taking work, let in-flight work finish within the grace period, exit 0."""
    ctx.dispatcher.on_shutdown("shutdown command")
    return {"shutting_down": True, "grace_s": ctx.dispatcher.limits.shutdown_grace_s}


def echo(ctx: Context, args: dict) -> dict:
    """Return the args unchanged (any size, any format)."""
    return args


def sleep(ctx: Context, args: dict) -> dict:
    """Wait args.ms milliseconds like a slow backend call; stops early on cancel or deadline."""
    ctx.wait(args["ms"] / 1000)
    return {"slept_ms": args["ms"]}
