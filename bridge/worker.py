"""``portbridge worker``: the loop that joins transport, framing and dispatcher.

The worker assembles the process: the transport (the descriptors), the
registry, the runtime (``bridge.runtime``: sessions, scheduler, in-flight
table, timers, callbacks, stats, replies; the ``Control`` the core commands
manage the worker through) and the dispatcher that routes frames into it.

Start-up order is chosen so the client hears ``ready`` as early as possible:
guard stdio, configure logs, register the core and the backends (cheap, no
framework imports), write ``ready``, then let backends start their background
work. The main thread then only reads: frames go to the dispatcher, which runs
control commands inline and schedules the rest.

Shutdown (stdin EOF, SIGTERM, SIGINT, the ``shutdown`` command, stdout
closed by the reader, or the death of the parent process) is one path: stop
taking work, give in-flight requests ``--shutdown-grace`` seconds, fail what is
left with a ``shutdown`` error, stop the backends and exit. The process always
ends through ``os._exit`` after the streams are flushed, so a handler stuck in
an uninterruptible call (or a library's non-daemon thread) can never keep an
orphaned worker alive; and a watchdog ends it ``SHUTDOWN_MARGIN_S`` after the
grace period whatever is still running, so a backend whose ``shutdown()`` hangs
cannot either.

End of input is how a parent normally says goodbye, but not the only way a
worker learns it is alone: another process may hold the write end of its stdin.
The worker also watches its parent process (``PARENT_POLL_S``), and on Linux asks
the kernel for a signal when the parent dies (PR_SET_PDEATHSIG), which only
makes that check run at once.

A bad backend option (an unknown ``--backends`` name, a ``--backend-module``
that names no module or attribute) prints one line to stderr and exits 2, even
if input ended first.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from . import core_commands, logs
from .backends import load as load_backends
from .dispatcher import Dispatcher
from .errors import RegistrationError
from .framing import DEFAULT_DESYNC_BYTES, HEADER, HEADER_SIZE, Empty, FrameDecoder, Oversized
from .limits import Limits
from .processes import end_descendants
from .registry import Registry
from .runtime import Runtime
from .transport import Transport, guard_stdio

log = logging.getLogger("portbridge.worker")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DESYNC = 3
# After the grace period, what the rest of shutdown may take (the last replies, the backends'
# shutdown hooks, ending handler-started processes) before the process exits regardless.
SHUTDOWN_MARGIN_S = 2.0
BACKEND_SHUTDOWN_S = 1.0  # of that margin, what all backends' shutdown() hooks may take
PARENT_POLL_S = 0.25  # how often the worker checks that its parent process is still there


@dataclass
class WorkerConfig:
    fmt: str = "auto"
    limits: Limits = field(default_factory=Limits)
    desync_bytes: int = DEFAULT_DESYNC_BYTES
    log_level: str = "warning"
    log_format: str = "text"
    log_frames: bool = False
    quiet_stderr: bool = False  # no log record on stderr (logs.configure's quiet)
    backends: list[str] | None = None
    backend_modules: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)  # modules of @command functions (bridge.sdk)
    debug: bool = False


class Worker:
    def __init__(self, config: WorkerConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        transport.on_closed = self._client_gone
        self.registry = Registry()
        self.backends: dict = {}  # filled by _start_backends, after ready
        self.runtime = Runtime(self.registry, transport.write, config.limits, fmt=config.fmt, debug=config.debug,
                               backends=self.backends, on_shutdown=self.begin_shutdown,
                               write_frames=transport.write_frames)
        self.dispatcher = Dispatcher(self.runtime)
        core_commands.register(self.registry, self.runtime)
        self._stopping = threading.Lock()
        self._stopper: threading.Thread | None = None
        self._usage_error: str | None = None  # a bad backend option: exit 2, whatever else happened
        self._parent = os.getppid()

    def run(self) -> int:
        self._watch_signals()
        replies = self.runtime.replies
        if self.config.log_frames:
            logs.forward_as_events(lambda data: replies.event("log", data), self.config.log_level)
        replies.event("ready", core_commands.ready_data(self.registry, self.config.limits, self.config.fmt))
        self._watch_parent()
        threading.Thread(target=self._start_backends, name="portbridge-backends", daemon=True).start()
        code = self._read_loop()
        self._client_gone("stdin closed" if code == EXIT_OK else "stream out of sync", code)
        threading.Event().wait()  # the shutdown thread ends the process
        return code  # not reached

    def _start_backends(self) -> None:
        """Discover and register backends, then start them (off the reading thread).

        Entry-point discovery alone costs ~30 ms of imports, so it happens after
        ``ready``; a backend command that arrives meanwhile waits for it
        (``Registry.lookup``) instead of failing as unknown.
        """
        config = self.config
        try:
            exposed: list = []
            names = config.backends
            if config.expose or names != []:  # --backends '' and no --expose: nothing to look for
                from .sdk.expose import backends as exposed_modules

                exposed, names = exposed_modules(config.expose, names)
            self.backends.update(load_backends(self.registry, names, config.backend_modules, exposed))
        except RegistrationError as exc:
            self._usage_error = str(exc)
            # One line on the process's stderr, whatever the log format, even --quiet-stderr: why it exits 2.
            os.write(2, f"portbridge worker: {exc}\n".encode("utf-8", "replace"))
            self.begin_shutdown(f"backend registration failed: {exc}", EXIT_USAGE)
            return
        finally:
            self.registry.complete.set()
        for backend in self.backends.values():
            try:
                backend.start()
            except Exception:
                log.exception("backend %s failed to start", backend.name)

    def _read_loop(self) -> int:
        decoder = FrameDecoder(self.config.limits.max_frame_bytes, self.config.desync_bytes)
        dispatcher = self.dispatcher
        handle_payload = dispatcher.handle_payload
        transport = self.transport
        read, split, max_frame_bytes = transport.read, decoder.split, decoder.max_frame_bytes
        unpack_header = HEADER.unpack_from
        target = None  # the unfilled part of a large frame being read
        clean = True  # the decoder holds nothing
        while True:
            if target is not None:  # inside a large frame: the kernel copies into its buffer
                n = transport.read_into(target)
                target.release()
                if not n:
                    break
                decoder.advance(n)
                items = split(b"")
            else:
                data = read()
                if not data:
                    break
                # Whole frames come back as views of the read buffer: each is
                # handled (decoded) before the next read overwrites it.
                if clean:
                    # The usual read: exactly one whole request, taken without the decoder
                    # (written out here: a call is ~3% of a ping's instructions).
                    n = len(data) - HEADER_SIZE
                    if n > 0 and unpack_header(data)[0] == n and n <= max_frame_bytes:
                        handle_payload(data[HEADER_SIZE:])
                        continue
                items = split(data)
            code = self._handle_items(items)
            if code is not None:
                return code
            clean = not decoder.pending()
            target = decoder.writable()
        if decoder.pending():
            dispatcher.handle_truncated(decoder.pending())
        return EXIT_OK

    def _handle_items(self, items: list) -> int | None:
        """What one read completed; the exit code if the stream lost its framing."""
        dispatcher = self.dispatcher
        batch = len(items) > 1  # replies to one chunk's control requests leave together
        if batch:
            self.transport.begin_batch()
        try:
            for item in items:
                if type(item) in (memoryview, bytes, bytearray):
                    dispatcher.handle_payload(item)
                elif isinstance(item, Oversized):
                    dispatcher.handle_oversized(item.length, item.head)
                elif isinstance(item, Empty):
                    dispatcher.handle_empty()
                else:  # StreamDesync: always the last item
                    log.error("%s; no further input is read", item)
                    dispatcher.handle_desync(
                        item.declared, f"{item}; the worker stops reading and exits with code {EXIT_DESYNC}")
                    return EXIT_DESYNC
        finally:
            if batch:
                self.transport.end_batch()
        return None

    def _watch_signals(self) -> None:
        """SIGTERM and SIGINT start the shutdown path through a thread of their own.

        Python runs signal handlers on the main thread only, between bytecodes, and
        the main thread spends its life blocked in read(). The kernel delivers a
        signal to any thread: when another thread took it, read() was never
        interrupted and the handler never ran (8 signals at once left 2 workers in
        60 running for good). The C-level handler writes the signal's number to the
        wakeup fd whatever thread it runs on, and the watcher thread reads it there.
        """
        read_end, write_end = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(write_end, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _noted_by_watcher)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._signal_watcher, args=(read_end,), name="portbridge-signals",
                         daemon=True).start()

    def _signal_watcher(self, fd: int) -> None:
        while data := os.read(fd, 64):
            for number in data:
                if number in (signal.SIGTERM, signal.SIGINT):
                    self.begin_shutdown(signal.Signals(number).name)
                elif number == signal.SIGUSR1:  # the parent-death signal: check now
                    self._check_parent()

    def _watch_parent(self) -> None:
        """Shut down when the parent process dies, even if stdin never ends (someone else holds it)."""
        timers = self.runtime.timers
        if sys.platform.startswith("linux"):
            signal.signal(signal.SIGUSR1, _noted_by_watcher)
            # The kernel's signal makes the check run at once. Asked for on the timer thread, which
            # lives as long as the worker (the request is per thread), and after ready: ctypes
            # costs ~5 ms of imports.
            timers.at(0.0, lambda: _parent_death_signal(signal.SIGUSR1))
        timers.every(PARENT_POLL_S, self._check_parent)

    def _check_parent(self) -> None:
        if os.getppid() != self._parent:
            log.warning("the parent process (pid %d) is gone; shutting down", self._parent)
            self._client_gone("the parent process died")

    def _client_gone(self, reason: str, code: int = EXIT_OK) -> None:
        """The client can no longer send (input ended) or receive (output broke, or it died): no callback
        can be answered any more, and the worker shuts down."""
        self.runtime.callbacks.close(f"the client can no longer answer ({reason})")
        self.begin_shutdown(reason, code)

    def begin_shutdown(self, reason: str, code: int = EXIT_OK) -> None:
        """Start the one shutdown path (idempotent, callable from any thread or a signal handler)."""
        with self._stopping:
            if self._stopper is not None:
                return
            self.runtime.stop_accepting()
            deadline = self.config.limits.shutdown_grace_s + SHUTDOWN_MARGIN_S
            threading.Thread(target=self._watchdog, args=(deadline, code), name="portbridge-watchdog",
                             daemon=True).start()
            self._stopper = threading.Thread(
                target=self._shutdown, args=(reason, code), name="portbridge-shutdown", daemon=True)
            self._stopper.start()

    def _shutdown(self, reason: str, code: int) -> None:
        log.info("shutting down: %s", reason)
        try:
            failed = self.runtime.drain(self.config.limits.shutdown_grace_s)
            if failed:
                log.warning("%d request(s) did not finish within the grace period", failed)
            # Input may have ended before a bad backend option was found: that still exits 2.
            self.registry.complete.wait(BACKEND_SHUTDOWN_S)
            self._stop_backends()
            stopped = end_descendants()
            if stopped:
                log.warning("stopped %d process(es) started by handlers: %s", len(stopped), stopped)
        finally:
            self._exit(code)

    def _stop_backends(self) -> None:
        """Every backend's shutdown hook, together bounded by BACKEND_SHUTDOWN_S: one that hangs is left."""
        def stop_all() -> None:
            for backend in list(self.backends.values()):
                try:
                    backend.shutdown()
                except Exception:
                    log.exception("backend %s failed to shut down", backend.name)

        stopper = threading.Thread(target=stop_all, name="portbridge-backend-shutdown", daemon=True)
        stopper.start()
        stopper.join(BACKEND_SHUTDOWN_S)
        if stopper.is_alive():
            log.warning("a backend's shutdown() did not return within %.1f s; exiting without it",
                        BACKEND_SHUTDOWN_S)

    def _watchdog(self, seconds: float, code: int) -> None:
        """The last word: whatever shutdown is stuck on, the process exits ``seconds`` after it began."""
        time.sleep(seconds)
        log.error("shutdown still running %.1f s after it began; exiting now", seconds)
        self._exit(code, seal_s=0.1)

    def _exit(self, code: int, seal_s: float = 2.0) -> None:
        if self._usage_error is not None:
            code = EXIT_USAGE
        try:
            self.transport.seal(seal_s)
            logging.shutdown()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` when the parent dies (prctl PR_SET_PDEATHSIG); harmless if refused."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _noted_by_watcher(signum, frame) -> None:
    """The Python-level handler has nothing to do: the wakeup fd carries the signal."""


def serve(config: WorkerConfig) -> int:
    in_fd, out_fd = guard_stdio()
    logs.configure(config.log_level, config.log_format, quiet=config.quiet_stderr)
    return Worker(config, Transport(in_fd, out_fd)).run()
