"""A backend whose shutdown() never returns, as a backend stuck in a C call or a
deadlocked thread would be: the worker must still go when its parent does
(issue 10, defect 9). Loaded with --backend-module pb_hang_backend:backend."""

import threading

from bridge.backends import Backend


class HangingShutdown(Backend):
    name = "pb_hang"

    def register(self, registry) -> None:
        pass

    def shutdown(self) -> None:
        threading.Event().wait()


backend = HangingShutdown()
