"""Commands written with bridge.sdk, as a user would, for tests/test_sdk.py.

Exposed with ``--expose tests.support.sdk_commands`` (cwd: the checkout), so
they are served as ``sdk_commands.<name>``. Some behave, some misbehave on
purpose: raise every kind of exception, return what no frame can carry, print
to stdout, block past their deadline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Iterator, Literal, Optional, TypedDict

from bridge.sdk import BridgeError, Context, Schema, command


@command
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


class Point(TypedDict):
    x: float
    y: float


class Color(Enum):
    RED = "red"
    GREEN = "green"


@dataclass
class Polygon:
    """A named polygon."""

    name: str
    corners: list[Point]
    tags: list[str] = field(default_factory=list)


@command
def describe_polygon(polygon: Polygon, color: Color = Color.RED, scale: Optional[float] = None,
                     mode: Literal["area", "perimeter"] = "area", weights: dict[str, int] | None = None,
                     shape: tuple[int, ...] = ()) -> dict:
    """Report what arrived, and as which Python types.

    Args:
        polygon: the polygon to describe.
        mode: what to compute, area or perimeter
            (a continuation line).
    """
    return {
        "types": [type(polygon).__name__, type(polygon.corners[0]).__name__, type(color).__name__,
                  type(shape).__name__],
        "color": color,  # an Enum member: its value on the wire
        "polygon": polygon,  # a dataclass: a map on the wire
        "scale": scale,
        "mode": mode,
        "weights": weights,
        "shape": shape,
    }


@command(name="renamed", cpu_bound=True)
def burn(ms: Annotated[int, "milliseconds of CPU", Schema(minimum=0, maximum=10_000)] | None = 10) -> dict:
    """Compute for ms milliseconds of this thread's CPU time, holding the GIL."""
    until = time.thread_time() + (ms or 0) / 1000
    n = 0
    while time.thread_time() < until:
        n += 1
    return {"spins": n}


@command
def sqrt(x: float) -> float:
    """The square root of x; a negative x is refused as invalid input."""
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    return x ** 0.5


FAILURES = {
    "runtime": lambda: RuntimeError("the model is not loaded"),
    "key": lambda: KeyError("missing"),
    "zero": lambda: ZeroDivisionError("division by zero"),
    "base": lambda: BaseException("the root of it all"),
    "exit": lambda: SystemExit(3),
    "keyboard": lambda: KeyboardInterrupt(),
    "generator_exit": lambda: GeneratorExit(),
    "memory": lambda: MemoryError(),
    "recursion": lambda: RecursionError("too deep"),
    "not_found": lambda: BridgeError("not_found", "unknown_document", "no document 'd9'"),
}


@command
def fail(kind: Literal[tuple(FAILURES)]) -> None:  # type: ignore[valid-type]
    """Raise the named exception."""
    raise FAILURES[kind]()


class Opaque:
    pass


@command
def unencodable(kind: Literal["object", "nested", "int_keys", "bytes"]) -> Any:
    """Return something a frame cannot carry (bytes: not in JSON)."""
    return {"object": lambda: Opaque(), "nested": lambda: {"a": [1, {"b": Opaque()}]},
            "int_keys": lambda: {1: "one"}, "bytes": lambda: b"\x00\x01"}[kind]()


@command
def chatty(text: str) -> str:
    """Print to stdout three ways (print, sys.stdout, fd 1), then answer."""
    print(text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    os.write(1, (text + "\n").encode())
    return text.upper()


@command
def block(seconds: float) -> dict:
    """Block in an uninterruptible sleep (a C call that ignores deadlines)."""
    time.sleep(seconds)
    return {"slept": seconds}


class Stage(Enum):
    COUNTING = "counting"


@command
def count(n: int, ctx: Context) -> Iterator[int]:
    """Stream 0..n-1 as chunks, reporting progress (an Enum in it goes as its value); the result is the total."""
    for i in range(n):
        ctx.progress(i + 1, n, stage=Stage.COUNTING)
        yield i
    return sum(range(n))


RUNNING: dict[str, threading.Event] = {}  # marker -> set while a stream runs


@command
def endless(marker: str, ctx: Context) -> Iterator[dict]:
    """Stream forever (until cancelled or past the deadline); ``stopped`` tells whether it stopped."""
    running = RUNNING.setdefault(marker, threading.Event())
    running.set()
    i = 0
    try:
        while True:
            yield {"i": i}
            i += 1
            time.sleep(0.005)
    finally:
        running.clear()


@command
def stopped(marker: str) -> dict:
    """Whether the stream started with ``marker`` has stopped (its generator was closed)."""
    running = RUNNING.get(marker)  # None: cancelled before it started
    return {"stopped": running is None or not running.is_set()}


@command
def bad_chunk() -> Iterator[Any]:
    """Yield a value no frame can carry after a good one."""
    yield 1
    yield Opaque()


@command
def remember(ctx: Context, key: str, value: Any = None) -> dict:
    """Store value under key in this module's session state (when given); return the state."""
    if value is not None:
        ctx.state[key] = value
    return {"state": dict(ctx.state), "session_id": ctx.session_id}


@command
def ask_client(question: str, ctx: Context) -> dict:
    """Ask the client's `answer` callback, and say what it answered."""
    return {"answer": ctx.callback("answer", {"question": question})}


@command
def patient(seconds: float, ctx: Context) -> dict:
    """Wait cooperatively (ctx.wait): stops at once on cancel or deadline."""
    ctx.wait(seconds)
    return {"waited": seconds}


@command
def clock(ctx: Context) -> dict:
    """The request's remaining time as the command sees it."""
    return {"remaining": ctx.remaining(), "has_deadline": ctx.deadline is not None,
            "request_id": ctx.request_id, "cancelled": ctx.cancelled}


@command
async def double(x: int) -> int:
    """An async function."""
    await asyncio.sleep(0)
    return 2 * x


@command
async def slow_async(marker: str) -> None:
    """Await forever (until cancelled); ``stopped`` tells whether the coroutine ended."""
    running = RUNNING.setdefault(marker, threading.Event())
    running.set()
    try:
        await asyncio.sleep(3600)
    finally:
        running.clear()


@command
def everything(**fields: int) -> dict:
    """Any named integers."""
    return fields
