"""Processes and their trees: is one alive, what is below it, ending them so none outlives its owner.

Used by the worker (at shutdown it ends every process its handlers started)
and by the tests and benchmarks (no worker may outlive its test). Linux reads ``/proc``;
elsewhere no descendants are found and a pid counts as alive while signal 0
reaches it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def alive(pid: int) -> bool:
    """True while ``pid`` has not exited (a zombie has exited: its parent, or init, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:  # no /proc
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children of each of its threads, theirs, and so on."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def end_tree(pids: list[int], grace_s: float = 0.5) -> list[int]:
    """SIGTERM ``pids``, up to ``grace_s`` for them to exit, then SIGKILL; returns those still
    alive after the SIGKILL's grace (none, unless a process is stuck in the kernel)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while (pids := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not pids:
            break
    return pids


def end_descendants(grace_s: float = 0.5) -> list[int]:
    """End every process below this one (the whole tree is listed first: a grandchild whose parent
    dies is re-parented away and could no longer be found). Returns the pids it found."""
    pids = descendants(os.getpid())
    if pids:
        end_tree(pids, grace_s)
    return pids


def kill_process(process: subprocess.Popen) -> None:
    """SIGKILL a child unless it has exited, reap it, and close the pipes we hold to it."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
