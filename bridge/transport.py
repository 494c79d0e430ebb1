"""The file descriptors: a private copy of stdin and stdout, and the stdio guard.

``guard_stdio()`` runs first thing in a worker: it keeps private, non-inheritable
duplicates of fd 0 and fd 1 for frames, then points fd 1 (and ``sys.stdout``)
at stderr and fd 0 at /dev/null. A stray ``print()`` in any library, or a
subprocess a handler spawns, can then neither corrupt the outgoing frames nor
steal incoming bytes.

``Transport`` reads chunks and writes whole frames. Writes are serialised by a
lock and are all-or-nothing from the reader's point of view: a frame is never
interleaved with another. Once the reader has gone (EPIPE), every later write
is dropped and ``on_closed`` is called once.

Between ``begin_batch()`` and ``end_batch()`` the small frames written by the
thread that began the batch (the reading thread, answering control commands
from one chunk of input) are gathered and leave in one ``write``: a client that
pipelines 1,000 pings gets its replies in a few system calls instead of 1,000.
A lone request is a batch of one, so latency does not change.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import Callable

from .framing import HEADER

log = logging.getLogger("portbridge.transport")
F_SETPIPE_SZ = 1031  # Linux
PIPE_BYTES = 1024 * 1024
READ_BYTES = 1024 * 1024
_COPY_LIMIT = 64 * 1024  # below this, header + payload are joined into one write
_pack = HEADER.pack


def guard_stdio() -> tuple[int, int]:
    """Return private (in_fd, out_fd) and re-point fd 0 at /dev/null, fd 1 at stderr."""
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    os.set_inheritable(in_fd, False)
    os.set_inheritable(out_fd, False)
    sys.stdout.flush()
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    for fd in (in_fd, out_fd):
        _grow_pipe(fd)
    return in_fd, out_fd


def _grow_pipe(fd: int) -> None:
    """Ask for a larger pipe buffer (fewer wake-ups for big frames); harmless if refused."""
    try:
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, ImportError):
        pass


class Transport:
    def __init__(self, in_fd: int, out_fd: int, on_closed: Callable[[str], None] | None = None) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.closed = False
        self.on_closed = on_closed or (lambda reason: None)
        self._write_lock = threading.Lock()
        self._batch: list[bytes] | None = None  # frames gathered for one write
        self._batch_owner = 0
        self._batch_bytes = 0
        self._buffer = bytearray(READ_BYTES)
        self._buffers = [self._buffer]
        self._view = memoryview(self._buffer)

    def read_into(self, target: memoryview) -> int:
        """Read straight into ``target`` (a large frame's own buffer); 0 at end of input."""
        try:
            return os.readv(self.in_fd, [target])
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EIO):
                return 0
            raise

    def read(self) -> memoryview:
        """The next chunk of input; b"" at end of input."""
        try:
            n = os.readv(self.in_fd, self._buffers)
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EIO):
                return self._view[:0]
            raise
        return self._view[:n]

    def begin_batch(self) -> None:
        self._batch_owner = threading.get_ident()
        self._batch = []

    def end_batch(self) -> None:
        if not self._batch:  # nothing gathered (only the owner adds to it): no lock, no write
            self._batch = None
            return
        with self._write_lock:
            self._flush_batch()
            self._batch = None

    def _flush_batch(self) -> None:
        """Write the gathered frames (the write lock is held)."""
        batch = self._batch
        if batch:
            self._batch = []
            self._batch_bytes = 0
            self._guarded(self._write_all, batch[0] if len(batch) == 1 else b"".join(batch))

    def write(self, payload: bytes) -> None:
        """Write one frame (header + payload). Never raises for a closed reader."""
        size = len(payload)
        if size < _COPY_LIMIT:
            data = _pack(size) + payload
            if self._batch is not None and self._batch_owner == threading.get_ident():
                # The batch belongs to this thread: gathering a frame needs no lock. (seal()
                # flushes it from another thread under the lock; a frame gathered after that
                # is dropped, as every write after seal is.)
                if self.closed:
                    return
                self._batch.append(data)
                self._batch_bytes += size + 4
                if self._batch_bytes >= _COPY_LIMIT:
                    with self._write_lock:
                        self._flush_batch()
                return
            lock = self._write_lock
            lock.acquire()  # (cheaper than ``with`` on the path of every reply)
            try:
                if not self.closed:
                    written = os.write(self.out_fd, data)
                    if written != len(data):  # rare: a pipe takes a small write whole
                        self._write_all(memoryview(data)[written:])
            except OSError as exc:
                self._failed(exc)
            finally:
                lock.release()
            return
        with self._write_lock:
            if self.closed:
                return
            if self._batch is not None and self._batch_owner == threading.get_ident():
                self._flush_batch()  # keep this thread's frames in order
            self._guarded(self._write_large, _pack(size), payload)

    def write_frames(self, payloads: list[bytes]) -> None:
        """Write several frames in one system call when they are small (one wake-up of the reader
        instead of one per frame); in order, as ``write`` would one by one."""
        if len(payloads) == 1 or sum(map(len, payloads)) >= _COPY_LIMIT:
            for payload in payloads:
                self.write(payload)
            return
        data = b"".join(_pack(len(p)) + p for p in payloads)
        with self._write_lock:
            if self._batch is not None and self._batch_owner == threading.get_ident():
                self._flush_batch()  # keep this thread's frames in order
            self._guarded(self._write_all, data)

    def _write_large(self, header: bytes, payload: bytes) -> None:
        self._write_all(header)  # no copy of a large payload just to prepend 4 bytes
        self._write_all(payload)

    def _guarded(self, write, *args) -> None:
        """Run ``write(*args)`` (the write lock is held); a failed one closes the transport."""
        if self.closed:
            return
        try:
            write(*args)
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """A write failed (the write lock is held): the reader is gone; stop once. Nothing is
        logged here: with --log-frames a log record is a frame that this very thread would write,
        waiting for the lock it holds. Another thread logs, once every write is dropped."""
        self.closed = True
        reason = "stdout closed by the reader" if exc.errno == errno.EPIPE else f"stdout failed: {exc}"
        threading.Thread(target=self._report_closed, args=(reason,), daemon=True).start()

    def _report_closed(self, reason: str) -> None:
        log.warning("%s; stopping", reason)
        self.on_closed(reason)

    def seal(self, timeout: float = 2.0) -> None:
        """Wait for a write in progress (never exit mid-frame), then drop every later write."""
        acquired = self._write_lock.acquire(timeout=timeout)
        try:
            if acquired and self._batch:
                self._flush_batch()  # replies already produced still leave
        finally:
            self.closed = True
            if acquired:
                self._write_lock.release()

    def _write_all(self, data: bytes | memoryview) -> None:
        written = os.write(self.out_fd, data)
        if written == len(data):  # the usual case: a pipe takes a small write whole
            return
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(self.out_fd, view):]
