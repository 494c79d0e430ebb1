"""One thread that fires deadlines and periodic chores.

``at(when, fn)`` runs ``fn()`` at monotonic time ``when`` (deadlines of
requests) and returns a handle for ``cancel`` (a request answered in time
drops its deadline, so the heap holds only live ones); ``every(seconds, fn)``
runs ``fn()`` periodically (session expiry).
Callbacks run on the timer thread and must be quick; a failing callback is
logged and never stops the thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("portbridge.timers")


class Timers:
    def __init__(self) -> None:
        self._heap: list[list] = []  # [when, seq, fn or None when cancelled]
        self._cancelled = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def at(self, when: float, fn: Callable[[], None]) -> list:
        entry = [when, next(self._seq), fn]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="portbridge-timers", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list) -> None:
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def every(self, seconds: float, fn: Callable[[], object]) -> None:
        def tick() -> None:
            try:
                fn()
            finally:
                if not self._stopped:
                    self.at(time.monotonic() + seconds, tick)

        self.at(time.monotonic() + seconds, tick)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        entry = heapq.heappop(self._heap)
                        fn = entry[2]
                        if fn is None:
                            self._cancelled -= 1
                            continue
                        entry[2] = None  # fired: a later cancel() must not count it
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                else:
                    return
            try:
                fn()
            except Exception:
                log.exception("timer callback failed")
