"""A test backend whose commands call the client back (load it with ``--backend-module``).

``call_back {"name", "args", "declared", "times", "catch", "timeout_s"}`` checks
``name`` against the names the request declared (the backend's check, as a
real backend's would be), then calls it back ``times`` times and returns the
results, and how long each callback took as the worker saw it (``elapsed_ns``:
the round trip worker -> client -> worker). With ``catch`` it returns the
category of a failed callback instead of failing (the handler decides). ``call_back_parallel {"name", "args", "n"}``
calls back from ``n`` threads at once and counts the outcomes; ``call_back_inline``
is a control command that tries to call back (it must not be able to).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from bridge.backends import Backend
from bridge.errors import BridgeError, validation_error

CALL_BACK = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "args": {"type": "object"},
        "args_not_a_map": {"description": "call back with this value as args (a handler's mistake)"},
        "declared": {"type": "array", "items": {"type": "string"}},
        "times": {"type": "integer", "minimum": 1, "maximum": 1000},
        "catch": {"type": "boolean"},
        "timeout_s": {"type": "number", "minimum": 0},
    },
    "required": ["name"],
    "additionalProperties": False,
}
PARALLEL = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "args": {"type": "object"},
                   "n": {"type": "integer", "minimum": 1, "maximum": 1000}},
    "required": ["name", "n"],
    "additionalProperties": False,
}


def call_back(ctx, args):
    name = args["name"]
    if name not in args.get("declared", [name]):
        raise validation_error("undeclared_callback", f"callback {name!r} was not declared by this request",
                               callback=name)
    results, elapsed = [], []
    for _ in range(args.get("times", 1)):
        started = time.perf_counter_ns()
        try:
            call_args = args["args_not_a_map"] if "args_not_a_map" in args else args.get("args", {})
            results.append(ctx.callback(name, call_args, timeout=args.get("timeout_s")))
        except BridgeError as exc:
            if not args.get("catch"):
                raise
            return {"caught": exc.category, "code": exc.code, "message": exc.message, "results": results}
        elapsed.append(time.perf_counter_ns() - started)
    return {"results": results, "elapsed_ns": elapsed}


def call_back_parallel(ctx, args):
    outcomes: Counter = Counter()
    results = []
    lock = threading.Lock()

    def one(i):
        try:
            result = ctx.callback(args["name"], {**args.get("args", {}), "i": i})
            with lock:
                outcomes["ok"] += 1
                results.append(result)
        except BridgeError as exc:
            with lock:
                outcomes[f"{exc.category}/{exc.code}"] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args["n"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"outcomes": dict(outcomes), "results": results}


def call_back_inline(ctx, args):
    return ctx.callback("anything", {})


class CallbackBackend(Backend):
    name = "callbacks_test"

    def register(self, registry) -> None:
        registry.command("call_back", schema=CALL_BACK, backend=self.name)(call_back)
        registry.command("call_back_parallel", schema=PARALLEL, backend=self.name)(call_back_parallel)
        registry.command("call_back_inline", control=True, backend=self.name)(call_back_inline)


backend = CallbackBackend()
