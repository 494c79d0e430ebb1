"""Logging to stderr (text or JSON lines), optionally forwarded as ``log`` events.

Every record carries the id, trace id and session of the request being handled
on its thread (set by the runtime through ``enter_request`` on handler threads,
and by the dispatcher in ``READING`` on the reading thread). Secrets are
scrubbed from every line. stdout is never touched: it carries frames only.
"""

from __future__ import annotations

import contextvars
import logging
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
            pass  # the stream is gone or broken; stderr still has the line
        finally:
            self._busy.on = False


def configure(level: str = "warning", fmt: str = "text") -> logging.Logger:
    """Point the root logger at stderr with our format; returns the portbridge logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return logging.getLogger("portbridge")


def forward_as_events(sink: Callable[[dict], None], level: str) -> EventForwarder:
    forwarder = EventForwarder(sink, logging.getLevelName(level.upper()))
    forwarder.addFilter(_RequestFilter())
    logging.getLogger().addHandler(forwarder)
    return forwarder
