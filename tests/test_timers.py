"""The timer thread: fires in order, cancels cleanly, keeps its count right."""

from __future__ import annotations

import threading
import time

from bridge.timers import Timers


def test_fires_in_deadline_order_and_counts_right():
    timers, fired, done = Timers(), [], threading.Event()
    now = time.monotonic()
    handles = [timers.at(now + d, lambda d=d: fired.append(d)) for d in (0.03, 0.01, 0.02)]
    timers.at(now + 0.05, done.set)
    assert done.wait(5)
    assert fired == [0.01, 0.02, 0.03]
    for h in handles:  # cancelling what already fired changes nothing
        timers.cancel(h)
    assert len(timers) == 0
    timers.stop()


def test_cancelled_entries_never_fire_and_are_compacted():
    timers, fired, done = Timers(), [], threading.Event()
    far = time.monotonic() + 60
    handles = [timers.at(far, lambda: fired.append(1)) for _ in range(500)]
    for h in handles:
        timers.cancel(h)
        timers.cancel(h)  # twice is harmless
    assert len(timers) == 0 and len(timers._heap) < 500
    timers.at(time.monotonic() + 0.01, done.set)
    assert done.wait(5) and fired == []
    timers.stop()


def test_every_repeats_and_survives_a_failing_callback():
    timers, ticks, done = Timers(), [], threading.Event()

    def tick():
        ticks.append(1)
        if len(ticks) == 3:
            done.set()
        raise RuntimeError("a failing chore must not stop the timer thread")

    timers.every(0.01, tick)
    assert done.wait(5)
    timers.stop()
