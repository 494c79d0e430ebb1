"""Concurrency for non-control requests: a bounded thread pool with session lanes.

* At most ``max_concurrency`` handlers run at once (threads are started lazily).
* Requests of one session run one at a time, in arrival order: a session whose
  request is queued or running holds a *lane*, and its later requests wait in it.
  Requests without a session have no lane and run as soon as a thread is free.
* At most ``max_queue`` requests wait (in lanes or for a thread); beyond that
  ``submit`` refuses with ``overloaded`` instead of growing without limit.

A lane is released when its request gets its final reply, even if the handler
is still running (it timed out or was cancelled and cannot be interrupted), so
one stuck call cannot block its session forever; the thread stays counted as
busy until the handler really returns, so stuck calls cannot grow the pool.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from .inflight import Job
from .errors import overloaded


class _Lane:
    __slots__ = ("holder", "waiting")

    def __init__(self, holder: Job) -> None:
        self.holder = holder  # the session's job that is ready or running
        self.waiting: deque[Job] = deque()


class Scheduler:
    def __init__(self, max_concurrency: int, max_queue: int, run: Callable[[Job], None]) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._run = run
        self._cond = threading.Condition()
        self._ready: deque[Job] = deque()  # jobs that may start as soon as a thread is free
        self._lanes: dict[str, _Lane] = {}  # busy sessions
        self._threads = 0
        self._idle = 0
        self._running = 0
        self._waiting = 0  # jobs in _ready or in a lane
        self._closed = False

    # -- figures for stats ---------------------------------------------------

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def threads(self) -> int:
        return self._threads

    # -- submitting ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            key = job.request.session_id
            lane = self._lanes.get(key) if key is not None else None
            starts_now = lane is None and self._free_threads() > 0
            if self._waiting >= self.max_queue and not starts_now:
                raise overloaded(
                    "queue_full",
                    f"{self._waiting} requests are already waiting (limit --max-queue {self.max_queue}); retry later",
                    queued=self._waiting,
                    max_queue=self.max_queue,
                )
            if lane is not None:
                lane.waiting.append(job)
                self._waiting += 1
                return
            if key is not None:
                self._lanes[key] = _Lane(job)
            self._make_ready(job)

    def _free_threads(self) -> int:
        """Threads that could pick up a new job now (idle ones not yet claimed, or ones we may start)."""
        return (self._idle - len(self._ready)) + (self.max_concurrency - self._threads)

    def _make_ready(self, job: Job) -> None:
        self._ready.append(job)
        self._waiting += 1
        if self._idle >= len(self._ready):
            self._cond.notify()
        elif self._threads < self.max_concurrency:
            self._threads += 1
            threading.Thread(target=self._loop, name=f"portbridge-handler-{self._threads}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._ready:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                job = self._ready.popleft()
                self._waiting -= 1
                self._running += 1
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running -= 1

    # -- lanes -------------------------------------------------------------------

    def release_lane(self, job: Job) -> None:
        """Called once a job got its final reply: if it held its session's lane, the next may start."""
        key = job.request.session_id
        if key is None:
            return
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None or lane.holder is not job:
                return
            if lane.waiting:
                lane.holder = lane.waiting.popleft()
                self._waiting -= 1
                self._make_ready(lane.holder)
            else:
                del self._lanes[key]

    def withdraw(self, job: Job) -> bool:
        """Remove a job that has not started (cancelled or expired while waiting)."""
        with self._cond:
            if job in self._ready:
                self._ready.remove(job)
                self._waiting -= 1
                return True
            key = job.request.session_id
            lane = self._lanes.get(key) if key is not None else None
            if lane is not None and job in lane.waiting:
                lane.waiting.remove(job)
                self._waiting -= 1
                return True
            return False

    def close(self) -> None:
        """Let idle threads exit (used at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
