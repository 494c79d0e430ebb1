"""What a handler sees of its request: ``handler(ctx, args) -> result``.

The context is deliberately narrow: the request's identity (``request_id``,
``session_id``, ``meta``, ``format``), its scope's store, events (``emit``,
``progress``), callbacks to the client, its deadline and whether it was
already answered. It is also the one context user code gets: ``bridge.sdk``
hands this very type to ``@command`` functions and ``@program`` modules,
scoped to their module's namespace (``scoped``), whose ``state`` is that
namespace's dict in the scope. A handler never
sees the runtime, the scheduler or another request; commands that manage the
worker itself (cancel, end_session, shutdown...) are given a control interface
when they are registered (``core_commands``), not through the context.

Stores: ``ctx.store`` is the dict of the request's scope (its session's, or the
global one when the request has no session); ``ctx.global_store`` is the
global scope's. Each backend keeps its state under a key of its own
(``ctx.store.setdefault("dspy", Scope())``); the dict lives as long as the
session and a backend's ``close_session`` hook sees it go.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from .inflight import interrupted
from .wire import to_wire

if TYPE_CHECKING:
    from .callbacks import Callbacks
    from .envelope import Request
    from .inflight import Job
    from .replies import Replies

_NO_ARGS: dict = {}  # callback's default: never changed (the callbacks table refuses anything but a map)
HOLD_MOST = 32  # events emit_soon holds for a request's next frame, at most...
HOLD_LONGEST_S = 0.1  # ...and for at most this long (the next event held after that goes out with them)


class Services:
    """What a worker lends every handler's context (one instance per worker)."""

    __slots__ = ("replies", "callbacks", "global_store")

    def __init__(self, replies: Replies, callbacks: Callbacks, global_store: dict) -> None:
        self.replies = replies  # the worker's output: events go out through it
        self.callbacks = callbacks
        self.global_store = global_store


class Context:
    __slots__ = ("store", "owner", "_request", "_codec", "_services", "_job")

    def __init__(self, request: Request, codec: Any, store: dict, services: Services, job: Job | None = None,
                 owner: str = "") -> None:
        self.store = store
        self.owner = owner  # whose ``state`` this context shows: an exposed module's namespace
        self._request = request
        self._codec = codec
        self._services = services
        # Scheduled requests have a job (they can be cancelled, time out, wait, call back).
        # Control commands run inline on the reading thread without one: they are answered
        # as soon as they return, so nothing can interrupt them.
        self._job = job

    def scoped(self, owner: str) -> Context:
        """The same request's context, whose ``state`` is ``owner``'s (an exposed module's namespace)."""
        return Context(self._request, self._codec, self.store, self._services, self._job, owner)

    @property
    def request_id(self) -> Any:
        return self._request.id

    @property
    def session_id(self) -> str | None:
        return self._request.session_id

    @property
    def meta(self) -> Mapping:
        """The request's ``meta`` map (read-only: it is echoed in the reply as it came)."""
        return self._request.meta

    @property
    def notify(self) -> frozenset:
        """The optional events the client asked for with this request (``notify``, protocol 1.2)."""
        return self._request.notify

    @property
    def format(self) -> str:
        """The request's format (``json`` or ``msgpack``): its reply and events use it too."""
        return self._codec.name

    @property
    def state(self) -> dict:
        """The owner's dict in the request's scope: it lives as long as the session (``end_session``,
        the idle TTL) and no other owner or session sees it. A session's requests run one at a time;
        requests without a session share the worker's global scope and may run concurrently."""
        return self.store.setdefault(f"sdk:{self.owner}", {})

    @property
    def global_store(self) -> dict:
        """The global scope's store (``store`` when the request has no session)."""
        return self._services.global_store

    @property
    def deadline(self) -> float | None:
        """The request's deadline on the ``time.monotonic()`` clock, or None without one."""
        return self._job.deadline if self._job is not None else None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        deadline = self.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    @property
    def cancelled(self) -> bool:
        """True once the request was answered from outside the handler (cancel, deadline, shutdown)."""
        return self._job is not None and self._job.outcome is not None

    def check(self) -> None:
        """Raise if the request was already answered from outside: a ``BridgeError`` of the category
        that answered it (``cancelled``, ``timeout``, ``shutdown``)."""
        job = self._job
        if job is not None and job.outcome is not None:
            raise interrupted(job.outcome)

    def wait(self, seconds: float) -> None:
        """Sleep like a slow call, but stop at once (raising, as ``check``) when the request is answered."""
        if self._job is None:
            time.sleep(seconds)
        elif self._job.wait_interrupted(seconds):
            self.check()

    def emit(self, name: str, data: Any) -> None:
        """Send an event (``chunk``, ``progress``) for this request, unless it was already answered.

        ``data`` goes through ``bridge.wire.to_wire`` (dataclasses, numpy...); what no frame can
        carry raises a ``serialization`` error here, in the code that sent it."""
        job = self._job
        if job is None or not job.done:
            data = to_wire(data, self._codec.name != "json")
            held = job.take_held() if job is not None else None  # they go first, in the same write
            self._services.replies.event(name, data, self._request.id, self._codec, held)

    def emit_soon(self, name: str, data: Any) -> None:
        """Send an event with the request's next frame (its reply, or an event or callback it sends)
        rather than on its own: for an event the client needs soon but not at once, one write and
        one wake-up of the client instead of two. At most ``HOLD_MOST`` events wait, for at most
        ``HOLD_LONGEST_S`` seconds (checked when the next is held). Otherwise as ``emit``."""
        job = self._job
        if job is None:
            self.emit(name, data)
            return
        if job.done:
            return  # as emit: nothing goes out after the reply (hold checks again, for a race)
        replies = self._services.replies
        frame = replies.droppable_frame(name, to_wire(data, self._codec.name != "json"), self._request.id,
                                        self._codec)
        if frame is None:
            return
        held = job.hold(frame, HOLD_MOST, HOLD_LONGEST_S)
        if held:
            replies.write_frames(held)

    def progress(self, done: int | float, total: int | float | None = None, **data: Any) -> None:
        """Send a ``progress`` event: ``{"done", "total", ...data}`` (``total`` left out when None)."""
        self.emit("progress", {"done": done, **({"total": total} if total is not None else {}), **data})

    def callback(self, name: str, args: Any = _NO_ARGS, timeout: float | None = None) -> Any:
        """Run the client's callback ``name`` with ``args`` and return its result (bridge.callbacks).

        Blocks within the request's remaining budget (and ``timeout`` seconds if given). Raises
        ``CallbackError`` with the client's category (``execution`` by default) when the callback
        failed; ``timeout``, ``cancelled`` or ``shutdown`` when the request or the client can no
        longer wait for it; ``overloaded`` when too many callbacks are in flight. Check ``name``
        against what the request declared before calling: the worker carries any name.
        """
        return self._services.callbacks.call(self._job, name, args, timeout)
