"""``@command``: a typed function as a worker command (what ``bridge.sdk`` documents).

The decorator only marks the function and remembers it under its module;
``build`` makes the registry command when the module is exposed (``expose``),
so hints may name classes defined further down the module. The handler
converts the checked arguments, hands the request's context (scoped to the
namespace) to a ``Context`` parameter, streams a generator's items as
``chunk`` events, runs an ``async def`` on a loop of its own, and gives what
the function raised its wire category.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

from ..errors import BridgeError, RegistrationError
from ..registry import Command
from ..wire import to_wire
from .parameters import Parameters, convert, description, parameters

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


def build(fn: Callable, namespace: str, backend: str) -> Command:
    """The registry command of a decorated function exposed under ``namespace``."""
    marks = getattr(fn, MARK)
    where = f"{fn.__module__}.{fn.__qualname__}"
    if inspect.isasyncgenfunction(fn):
        raise RegistrationError(f"{where}: async generators are not supported; use a plain generator")
    params = parameters(fn, where)
    handler = _handler(fn, params, namespace)
    return Command(f"{namespace}.{marks['name']}", handler, params.schema, backend=backend,
                   description=description(inspect.getdoc(fn) or ""), cpu_bound=marks["cpu_bound"])


def _handler(fn: Callable, params: Parameters, namespace: str) -> Callable:
    context = params.context
    streams = inspect.isgeneratorfunction(fn)
    awaits = inspect.iscoroutinefunction(fn)

    def handler(ctx, args: dict) -> Any:
        binary = ctx.format != "json"
        with user_errors():
            kwargs = convert(params, args)
            if context is not None:
                kwargs[context] = ctx.scoped(namespace)
            result = fn(**kwargs)
            if awaits:
                result = _await(result, ctx)
            elif streams:
                result = _stream(result, ctx, binary)
            return to_wire(result, binary)

    handler.__name__ = handler.__qualname__ = f"{namespace}.{fn.__name__}"
    handler.__doc__ = fn.__doc__
    return handler


class user_errors:
    """What user code raised, in its wire category: a ``BridgeError`` keeps its own, a
    ``ValueError`` is ``validation`` (the code refused its input), anything else ``execution``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None or isinstance(exc, BridgeError):
            return
        if isinstance(exc, ValueError):
            raise BridgeError("validation", "invalid_value", message(exc),
                              {"exception": type(exc).__name__}) from exc
        name = type(exc).__name__  # SystemExit, KeyboardInterrupt from user code too
        text = message(exc)
        raise BridgeError("execution", "command_failed", f"{name}: {text}" if text != name else name,
                          {"exception": name}) from exc


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


def message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still gets its reply
        text = ""
    return (text or type(exc).__name__)[:MAX_MESSAGE]
