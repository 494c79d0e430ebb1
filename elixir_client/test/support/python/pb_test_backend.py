"""A backend for the Elixir client's tests: real commands in a real worker.

Loaded with ``--backend-module pb_test_backend:backend`` (PYTHONPATH pointing at
this folder). The core commands have no per-request events; ``emit`` sends some,
so the tests can check that events reach their caller, in order, before the
final reply. ``crash`` raises, as a buggy backend would (an ``internal`` error,
whose recovery is to restart the worker).
"""

from bridge.backends import Backend
from bridge.registry import ANY_ARGS


class ElixirTestBackend(Backend):
    name = "pb_test"

    def register(self, registry) -> None:
        registry.command("emit", schema=ANY_ARGS, backend=self.name)(emit)
        registry.command("crash", schema=ANY_ARGS, backend=self.name)(crash)


def emit(ctx, args):
    """Send ``n`` events named ``event`` (``delay_ms`` apart), then answer."""
    n = args.get("n", 3)
    name = args.get("event", "chunk")
    delay = args.get("delay_ms", 0) / 1000
    for i in range(n):
        ctx.emit(name, {"i": i, "of": n})
        if delay:
            ctx.wait(delay)
    return {"emitted": n}


def crash(ctx, args):
    """Raise an exception the worker does not expect."""
    raise RuntimeError(args.get("message", "a bug in the backend"))


backend = ElixirTestBackend()
