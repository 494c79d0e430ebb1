"""Logging to stderr (text or JSON lines), optionally forwarded as ``log`` events.

Everything the worker has to say takes the logging path, so that it is
formatted, scrubbed and forwarded alike: its own records, Python warnings
(``logging.captureWarnings``), exceptions nobody caught in a thread, in the
main thread or in a finaliser (records of ``portbridge.uncaught``).

``quiet`` (``--quiet-stderr``, for test suites) writes no record to stderr: they
go to ``log`` events (``--log-frames``) or nowhere. What Python code prints goes
that way too, one record per line: ``sys.stdout`` as ``info`` records of
``portbridge.stdout``, ``sys.stderr`` as ``warning`` records of
``portbridge.stderr`` (a progress bar's ``\r`` updates leave their last state).
Descriptors are not touched: what writes to fd 1 or 2 itself (a C library, a
child process, ``os.write``) still reaches stderr, as an interpreter's crash
report must.

Every record carries the id, trace id and session of the request being handled
on its thread (set by the runtime through ``enter_request`` on handler threads,
and by the dispatcher in ``READING`` on the reading thread). Secrets are
scrubbed from every line. stdout is never touched: it carries frames only.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

import orjson

from .redaction import scrub_text

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("portbridge_request", default=None)
LEVELS = ("debug", "info", "warning", "error", "critical")


# enter_request(request) makes ``request`` the one log records on this thread belong
# to and returns a token for leave_request(token). They are the context variable's own
# methods: no Python frame around them on every request.
enter_request = _current.set
leave_request = _current.reset


class ReadingThread:
    """The request a control command handles on the reading thread. A plain attribute there
    (``READING.request = request``, then None): a context variable's set and reset cost more
    than the rest of a ping's handling. One reading thread per process: the worker's."""

    __slots__ = ("ident", "request")

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.request: Any = None  # an envelope.Request while a control command runs


READING = ReadingThread()


def current_request():
    """The request being handled on this thread, or None."""
    request = _current.get()
    if request is None and READING.request is not None and threading.get_ident() == READING.ident:
        return READING.request
    return request


class _RequestFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        record.request_id = getattr(request, "id", None)
        record.trace_id = request.meta.get("trace_id") if request is not None else None
        record.session_id = getattr(request, "session_id", None)
        return True


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict:
    message = record.getMessage()
    if record.exc_info:
        message = f"{message}\n{formatter.formatException(record.exc_info)}"
    doc = {
        "ts": round(record.created, 6),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": scrub_text(message),
    }
    for key in ("request_id", "trace_id", "session_id"):
        value = getattr(record, key, None)
        if value is not None:
            doc[key] = value
    return doc


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(record_fields(record, self), default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = record_fields(record, self)
        where = "".join(
            f" {key}={doc[key]}" for key in ("request_id", "trace_id", "session_id") if key in doc
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} {doc['level']:<8} {record.name}{where}: {doc['message']}"


class EventForwarder(logging.Handler):
    """Sends each record to ``sink(data)`` as the data of a ``log`` event."""

    def __init__(self, sink: Callable[[dict], None], level: int) -> None:
        super().__init__(level)
        self._sink = sink
        self._busy = threading.local()  # a record logged while sending must not loop

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            self._sink(record_fields(record, self.formatter or logging.Formatter()))
        except Exception:
            pass  # the stream is gone or broken: stderr has the line, unless quiet
        finally:
            self._busy.on = False


class LineLogger(io.TextIOBase):
    """A text stream whose every line becomes a log record (``sys.stdout``/``sys.stderr`` when quiet)."""

    MAX_LINE = 64 * 1024  # a longer line without a newline is logged in pieces (memory stays bounded)

    def __init__(self, logger: logging.Logger, level: int, fd: int) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._fd = fd
        self._partial = ""
        self._lock = threading.Lock()
        self._busy = threading.local()  # a line written while its record is logged must not loop

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The descriptor behind it, for code that writes there directly (faulthandler, subprocess)."""
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            *lines, partial = (self._partial + text).split("\n")
            if len(partial) > self.MAX_LINE:
                lines.append(partial)
                partial = ""
            self._partial = partial
        for line in lines:
            line = line.rpartition("\r")[2].rstrip()  # a progress bar's last state
            if line:
                self._log(line)
        return len(text)

    def _log(self, line: str) -> None:
        if getattr(self._busy, "on", False):  # logging itself printed (a handler's own error)
            os.write(2, (line + "\n").encode("utf-8", "replace"))
            return
        self._busy.on = True
        try:
            self._logger.log(self._level, "%s", line)
        finally:
            self._busy.on = False


_uncaught = logging.getLogger("portbridge.uncaught")


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _uncaught.error("uncaught exception in thread %s", name,
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _main_exception(exc_type, exc_value, exc_traceback) -> None:
    _uncaught.critical("uncaught exception", exc_info=(exc_type, exc_value, exc_traceback))


def _unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    _uncaught.warning("%s: %r", unraisable.err_msg or "exception ignored in", unraisable.object,
                      exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None)


def configure(level: str = "warning", fmt: str = "text", quiet: bool = False) -> logging.Logger:
    """Point the root logger at stderr with our format (nowhere when ``quiet``: see the module's
    docstring); returns the portbridge logger."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    if quiet:
        root.addHandler(logging.NullHandler())  # never logging's last resort, which writes to stderr
        sys.stdout = LineLogger(logging.getLogger("portbridge.stdout"), logging.INFO, 1)
        sys.stderr = LineLogger(logging.getLogger("portbridge.stderr"), logging.WARNING, 2)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        handler.addFilter(_RequestFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception
    sys.excepthook = _main_exception
    sys.unraisablehook = _unraisable
    return logging.getLogger("portbridge")


def forward_as_events(sink: Callable[[dict], None], level: str) -> EventForwarder:
    forwarder = EventForwarder(sink, logging.getLevelName(level.upper()))
    forwarder.addFilter(_RequestFilter())
    logging.getLogger().addHandler(forwarder)
    return forwarder
