"""A backend for the pool benchmark: ``burn {"ms": N}`` holds the GIL computing for
N ms of CPU time, as CPU-bound Python code (a model's inference, a parser) does.

Loaded with ``--backend-module benchmarks.cpu_backend:backend`` (cwd: the checkout).
"""

import time

from bridge.backends import Backend
from bridge.registry import ANY_ARGS


class CPUBackend(Backend):
    name = "bench_cpu"

    def register(self, registry) -> None:
        registry.command("burn", schema=ANY_ARGS, backend=self.name)(burn)


def burn(ctx, args):
    """Compute for ``ms`` milliseconds of this thread's CPU time."""
    until = time.thread_time() + args.get("ms", 20) / 1000
    n = 0
    while time.thread_time() < until:
        for _ in range(1000):
            n += 1
    return {"spins": n}


backend = CPUBackend()
