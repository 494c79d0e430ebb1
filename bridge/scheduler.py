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

Jobs ready to run wait in a ``queue.SimpleQueue`` (C) that idle threads block on,
and the counts live under a plain lock: a ``threading.Condition`` (Python code on
both sides of every hand-off) cost ~300 interpreter steps per request. A job
withdrawn from that queue stays in it, marked, and the thread that takes it
drops it.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Callable

from .errors import overloaded
from .inflight import Job


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
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None: a thread's cue to exit
        self._queued: set[Job] = set()  # jobs in _ready not yet taken (nor withdrawn)
        self._withdrawn: set[Job] = set()  # jobs still in _ready that their taker drops
        self._lanes: dict[str, _Lane] = {}  # busy sessions
        self._threads = 0
        self._idle = 0  # threads waiting on _ready (or about to)
        self._unclaimed = 0  # items in _ready, withdrawn ones included
        self._running = 0
        self._waiting = 0  # jobs in _ready or in a lane, withdrawn ones excluded
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
        key = job.request.session_id
        with self._lock:
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
            start = self._make_ready(job)
        if start:
            self._start_thread()

    def _free_threads(self) -> int:
        """Threads that could pick up a new job now (idle ones not yet claimed, or ones we may start)."""
        return (self._idle - self._unclaimed) + (self.max_concurrency - self._threads)

    def _make_ready(self, job: Job) -> bool:
        """Queue ``job`` for a thread (the lock is held); True if a thread must be started for it."""
        self._queued.add(job)
        self._waiting += 1
        self._unclaimed += 1
        self._ready.put(job)
        if self._idle >= self._unclaimed or self._threads >= self.max_concurrency:
            return False
        self._threads += 1
        return True

    def _start_thread(self) -> None:
        threading.Thread(target=self._loop, name=f"portbridge-handler-{self._threads}", daemon=True).start()

    def _loop(self) -> None:
        ready, lock = self._ready, self._lock
        while True:
            with lock:
                self._idle += 1
            job = ready.get()
            with lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
                self._unclaimed -= 1
                if job in self._withdrawn:
                    self._withdrawn.discard(job)
                    continue
                self._queued.discard(job)
                self._waiting -= 1
                self._running += 1
            try:
                self._run(job)
            finally:
                with lock:
                    self._running -= 1

    # -- lanes -------------------------------------------------------------------

    def release_lane(self, job: Job) -> None:
        """Called once a job got its final reply: if it held its session's lane, the next may start."""
        key = job.request.session_id
        if key is None:
            return
        start = False
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None or lane.holder is not job:
                return
            if lane.waiting:
                lane.holder = lane.waiting.popleft()
                self._waiting -= 1
                start = self._make_ready(lane.holder)
            else:
                del self._lanes[key]
        if start:
            self._start_thread()

    def withdraw(self, job: Job) -> bool:
        """Remove a job that has not started (cancelled or expired while waiting)."""
        with self._lock:
            if job in self._queued:
                self._queued.discard(job)
                self._withdrawn.add(job)
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
        """Let the threads exit once they are idle (used at shutdown)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._ready.put(None)
