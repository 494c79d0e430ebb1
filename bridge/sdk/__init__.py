"""Your own Python functions as worker commands.

    from bridge.sdk import command

    @command
    def add(a: int, b: int = 1) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

``portbridge worker --expose mypkg.mathcmds`` imports that module and serves
``mathcmds.add``: the module's last name, a dot, the function's name
(``@command(name="plus")`` renames the part after the dot; ``--expose
mypkg.mathcmds=math`` the part before it). Installed packages can list modules
in the ``portbridge.commands`` entry-point group instead (``math =
"mypkg.mathcmds"``). Only the worker's operator chooses modules: a client can
call what was exposed and nothing else.

- Arguments are checked against the schema derived from the type hints before
  the function runs (``bridge.sdk.hints``): str, int, float, bool, list[...],
  dict[str, ...], Optional/unions, Literal, Enum, TypedDict, dataclasses (built
  from their maps); ``Annotated[int, "what it is", Schema(minimum=1)]`` adds
  a description and schema keywords. ``describe`` shows the
  schema and the docstring; a Google-style ``Args:`` section describes each
  argument.
- The return value is the result (dataclasses, Enum members, tuples and numpy
  arrays are converted). A generator streams: each yielded value is a ``chunk``
  event ``{"value": item}``, and what the generator returns is the result.
  ``async def`` functions run on an event loop of their own, cancelled at
  once when their request is.
- A parameter annotated ``Context`` receives the request's context instead of
  an argument: ``progress``, this module's ``state`` in the session, the
  ``deadline``, cancellation (``cancelled``, ``check``, ``wait``) and callbacks.
- A ``ValueError`` is a ``validation`` error (the function refused its input),
  any other exception an ``execution`` error; the client sees the message, and
  the traceback only from a worker started with ``--debug``. ``BridgeError``
  (re-exported here) picks any category of protocol/errors.json.
- ``cpu_bound=True`` marks a function that holds the GIL while it computes:
  ``describe`` says so, so that a client can send it to a pool of Python
  processes that each run one request at a time (the Elixir ``PortBridge.Pool``
  with ``strategy: :exclusive``).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, get_args, get_origin, get_type_hints

from ..errors import BridgeError, RegistrationError
from ..registry import Command
from .hints import Schema, converter_of, schema_of, to_wire, with_default

__all__ = ["command", "Context", "Schema", "BridgeError"]

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MARK = "__portbridge_command__"  # what @command sets on a function: its name and flags
_DECLARED: dict[str, list[Callable]] = {}  # module name -> its decorated functions, in order
MAX_MESSAGE = 2000


def command(fn: Callable | None = None, *, name: str | None = None, cpu_bound: bool = False):
    """Mark ``fn`` as a command of its module; returns ``fn`` unchanged (tests call it directly).

    ``@command`` or ``@command(name="other_name", cpu_bound=True)``. The schema
    is derived when the module is exposed, so hints may name classes defined
    further down the module.
    """

    def mark(fn: Callable) -> Callable:
        if not callable(fn):
            raise RegistrationError(f"@command decorates functions, not {type(fn).__name__}")
        command_name = fn.__name__ if name is None else name
        if not isinstance(command_name, str) or not IDENTIFIER.match(command_name):
            raise RegistrationError(f"@command name {command_name!r} must be a Python identifier of at most 64 "
                                    "characters")
        setattr(fn, MARK, {"name": command_name, "cpu_bound": bool(cpu_bound)})
        _DECLARED.setdefault(fn.__module__, []).append(fn)
        return fn

    return mark if fn is None else mark(fn)


def declared(module_name: str) -> list[Callable]:
    """The functions ``@command`` marked in a module (already imported), in the order they were defined."""
    return list(_DECLARED.get(module_name, ()))


class Context:
    """What a command sees of its request: declare a parameter ``ctx: Context`` to receive it."""

    __slots__ = ("_ctx", "_key")

    def __init__(self, ctx, namespace: str) -> None:
        self._ctx = ctx  # the worker's bridge.context.Context
        self._key = f"sdk:{namespace}"

    @property
    def request_id(self) -> Any:
        return self._ctx.request_id

    @property
    def session_id(self) -> str | None:
        return self._ctx.session_id

    @property
    def meta(self) -> dict:
        return self._ctx.meta

    @property
    def state(self) -> dict:
        """This module's dict in the request's session: it lives as long as the session
        (``end_session``, the idle TTL) and no other module or session sees it. A
        session's requests run one at a time; requests without a session share the
        worker's global one and may run concurrently."""
        return self._ctx.store.setdefault(self._key, {})

    @property
    def deadline(self) -> float | None:
        """The request's deadline on the ``time.monotonic()`` clock, or None without one."""
        return self._ctx.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        return self._ctx.remaining()

    @property
    def cancelled(self) -> bool:
        """True once the request was answered from outside (cancel, deadline, shutdown):
        stop working, nobody reads the result."""
        return self._ctx.cancelled

    def check(self) -> None:
        """Raise (ending the command) if the request was cancelled or its deadline passed."""
        self._ctx.check()

    def wait(self, seconds: float) -> None:
        """Sleep, but stop at once (raising, as ``check``) when the request is cancelled."""
        self._ctx.wait(seconds)

    def progress(self, done: int | float, total: int | float | None = None, **data: Any) -> None:
        """Send a ``progress`` event: ``{"done", "total", ...data}``."""
        event = {"done": done, **({"total": total} if total is not None else {}), **data}
        self._ctx.emit("progress", to_wire(event, self._ctx.format != "json"))

    def emit(self, name: str, data: dict) -> None:
        """Send any event for this request (``data`` a map)."""
        self._ctx.emit(name, to_wire(data, self._ctx.format != "json"))

    def callback(self, name: str, args: dict | None = None) -> Any:
        """Call a function the client registered under ``name`` and wait for its result,
        within the request's remaining time (protocol/PROTOCOL.md, "Callbacks")."""
        return self._ctx.callback(name, args or {})


# -- a decorated function -> a registry Command --------------------------------------------

@dataclass
class Parameters:
    schema: dict
    converters: dict[str, Callable]
    context: str | None  # the name of the Context parameter, if any


def build(fn: Callable, namespace: str, backend: str) -> Command:
    """The registry command of a decorated function exposed under ``namespace``."""
    marks = getattr(fn, MARK)
    where = f"{fn.__module__}.{fn.__qualname__}"
    if inspect.isasyncgenfunction(fn):
        raise RegistrationError(f"{where}: async generators are not supported; use a plain generator")
    params = parameters(fn, where)
    doc = _ARGS_SECTION.sub("", inspect.getdoc(fn) or "").strip()  # the Args: section went into the schema
    handler = _handler(fn, params, namespace)
    return Command(f"{namespace}.{marks['name']}", handler, params.schema, backend=backend,
                   description=doc, cpu_bound=marks["cpu_bound"])


def parameters(fn: Callable, where: str) -> Parameters:
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:  # a hint naming something undefined
        raise RegistrationError(f"{where}: its type hints cannot be resolved: {exc}") from exc
    notes = arg_docs(inspect.getdoc(fn) or "")
    props: dict[str, dict] = {}
    required: list[str] = []
    converters: dict[str, Callable] = {}
    context = None
    extra: dict | bool = False
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name, Any)
        if hint is Context:
            context = p.name
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            raise RegistrationError(f"{where}: parameter {p.name!r} is positional-only; arguments arrive by name")
        if p.kind is p.VAR_KEYWORD:
            extra = schema_of(hint, f"{where}(**{p.name})")
            continue
        schema = schema_of(hint, f"{where}({p.name})")
        if p.name in notes and not _described(hint):  # Annotated[T, "..."] first, then Args:, then T's own
            schema = {**schema, "description": notes[p.name]}
        if p.default is p.empty:
            required.append(p.name)
        else:
            schema = with_default(schema, p.default)
        props[p.name] = schema
        if (convert := converter_of(hint)) is not None:
            converters[p.name] = convert
    schema = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = required
    return Parameters(schema, converters, context)


def _described(hint: Any) -> bool:
    return get_origin(hint) is Annotated and any(isinstance(note, str) for note in get_args(hint)[1:])


_SECTION = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ARGS_SECTION = re.compile(r"^(Args|Arguments|Parameters):[ \t]*\n(?:[ \t]+\S.*\n?|[ \t]*\n)*", re.M)
_ARG = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")


def arg_docs(doc: str) -> dict[str, str]:
    """Argument descriptions from a Google-style ``Args:`` section of a docstring."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if _SECTION.match(line.strip()):
            indent = None
            current = None
            for body in lines[i + 1:]:
                if not body.strip():
                    continue
                depth = len(body) - len(body.lstrip())
                if indent is None:
                    indent = depth
                if depth < indent or depth == 0:
                    break
                m = _ARG.match(body.strip())
                if depth == indent and m:
                    current = m.group(1).lstrip("*")
                    out[current] = m.group(2).strip()
                elif current is not None:
                    out[current] = f"{out[current]} {body.strip()}".strip()
            break
    return out


def _handler(fn: Callable, params: Parameters, namespace: str) -> Callable:
    converters, context = params.converters, params.context
    streams = inspect.isgeneratorfunction(fn)
    awaits = inspect.iscoroutinefunction(fn)

    def handler(ctx, args: dict) -> Any:
        binary = ctx.format != "json"
        try:
            kwargs = {k: converters[k](v) if k in converters else v for k, v in args.items()} \
                if converters else dict(args)
            if context is not None:
                kwargs[context] = Context(ctx, namespace)
            result = fn(**kwargs)
            if awaits:
                result = _await(result, ctx)
            elif streams:
                result = _stream(result, ctx, binary)
            return to_wire(result, binary)
        except BridgeError:
            raise
        except ValueError as exc:
            raise BridgeError("validation", "invalid_value", _message(exc),
                              {"exception": type(exc).__name__}) from exc
        except BaseException as exc:  # noqa: BLE001 -- SystemExit, KeyboardInterrupt from user code too
            kind = type(exc).__name__
            text = _message(exc)
            raise BridgeError("execution", "command_failed", f"{kind}: {text}" if text != kind else kind,
                              {"exception": kind}) from exc

    handler.__name__ = handler.__qualname__ = f"{namespace}.{fn.__name__}"
    handler.__doc__ = fn.__doc__
    return handler


def _await(coroutine, ctx) -> Any:
    """Run an ``async def`` command on an event loop of its own; cancel it (its ``await``
    raises CancelledError) as soon as the request is answered from outside."""
    import asyncio

    async def watched():
        task = asyncio.ensure_future(coroutine)
        while not task.done():
            await asyncio.wait({task}, timeout=0.05)
            if ctx.cancelled:
                task.cancel()
        return task.result()

    return asyncio.run(watched())


def _stream(gen, ctx, binary: bool) -> Any:
    """Send what a generator yields as ``chunk`` events; its return value is the result.
    Stops (closing the generator) as soon as the request is answered from outside."""
    try:
        while True:
            ctx.check()
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            ctx.emit("chunk", {"value": to_wire(item, binary)})
    finally:
        gen.close()


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still gets its reply
        text = ""
    return (text or type(exc).__name__)[:MAX_MESSAGE]
