"""A Python client for ``portbridge worker``: spawn it, send requests, match replies.

It is what the CLI (``call``, ``repl``, ``demo``), the tests and the benchmarks
use to talk to a real worker process, and a reference for clients in other
languages: one reader thread owns the worker's stdout, decodes every frame and
routes it by request id; events reach the request's ``on_event`` callback (or
its ``events`` list) before its final reply.

    with WorkerClient() as worker:
        reply = worker.request("echo", {"x": 1})
        assert reply["success"] and reply["result"] == {"x": 1}

Callbacks (protocol 1.1): a request may name the functions the worker can call
back while it runs, ``callbacks={"search": fn}``. Each ``callback`` event of
that request runs ``fn(args)`` on a thread of its own (never the reading
thread, so a slow callback holds up no reply, and a callback may itself make
requests on this client), and its return value goes back as
``callback_result``. A callback that raises answers an ``execution`` error; one
whose value the format cannot carry, a ``serialization`` error; a name the
request did not register, ``not_found``.

Admission (protocol 1.2): the worker's built-in ``portbridge.admit`` callback,
asked before every attempt of an LM configured with ``rate_limit``, is answered
by the client's ``admission`` (a ``bridge.devtools.pacing.Pacer`` by default: each model
paced to its limits, paused after a provider's 429, waiting no longer than the
request's budget; ``admission=None`` admits at once), unless the request
registered a ``portbridge.admit`` callback of its own. The pacer grants no
leases (protocol 1.3): every attempt asks. The pacer sees the ``lm_call``
events of every request (those of failed attempts are always sent, and a
provider's 429 pauses the model). ``notify=["lm_call"]`` asks for every call's
event.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from .. import codecs
from ..framing import MAX_LENGTH, Empty, FrameDecoder, Oversized, StreamDesync, encode_frame
from ..lmcalls import ADMIT, EVENT as LM_CALL
from .pacing import AdmissionError, Pacer

READ_BYTES = 1 << 20
READER_EXIT_S = 10.0  # how long __exit__ waits for the reader thread to see the end of a gone worker's output


class WorkerExited(RuntimeError):
    """The worker process ended (or closed its stdout) before answering."""


class RemoteError(RuntimeError):
    """A final reply with ``success: false``; ``.error`` is the wire error map."""

    def __init__(self, error: dict) -> None:
        super().__init__(f"{error.get('category')}/{error.get('code')}: {error.get('message')}")
        self.error = error
        self.category = error.get("category")
        self.code = error.get("code")


class _CategorisedError(Exception):
    """A built-in callback's failure in a category of its own (not ``execution``)."""

    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.category = category


log = logging.getLogger("portbridge.client")
Callback = Callable[[Any], Any]  # args (a map) -> a value the request's format carries


class Pending:
    """A request in flight: ``wait()`` for its final reply; ``events`` collects its events;
    ``callback_replies``, the worker's replies to this client's callback results."""

    def __init__(self, rid, on_event: Callable[[dict], None] | None,
                 callbacks: dict[str, Callback] | None = None, codec: Any = None) -> None:
        self.id = rid
        self.callbacks = callbacks or {}
        self.codec = codec
        self.callback_replies: list[dict] = []
        self.on_reply: Callable[[dict | None], None] | None = None  # called by the reader with the reply
        self.events: list[dict] = []
        self.reply: dict | None = None
        self.received_ns: int | None = None  # when the final reply was read (orders replies)
        self._on_event = on_event
        self._done = threading.Event()

    def _event(self, frame: dict) -> None:
        self.events.append(frame)
        if self._on_event is not None:
            self._on_event(frame)

    def _finish(self, frame: dict | None) -> None:
        self.received_ns = time.monotonic_ns()
        self.reply = frame
        self._done.set()
        if self.on_reply is not None:
            self.on_reply(frame)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = 60.0) -> dict | None:
        """The final reply; None if the worker exited first."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no reply to request {self.id!r} within {timeout} s")
        return self.reply


class _Runner:
    """Runs callbacks off the reading thread: a thread per callback in flight, kept for the next one
    when it is done. Never a fixed number: a callback may wait for a request whose callback needs a
    thread too."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable, *args: Any) -> None:
        with self._lock:
            start = not self._idle
            if not start:
                self._idle -= 1
        self._work.put((fn, args))
        if start:
            threading.Thread(target=self._loop, name="portbridge-client-callback", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args = self._work.get()
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 -- a runner thread outlives any one callback
                log.exception("a callback runner failed")
            with self._lock:
                self._idle += 1


def worker_command(worker_args=(), python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "bridge", "worker", *worker_args]


class WorkerClient:
    def __init__(
        self,
        worker_args=(),
        *,
        fmt: str = "json",
        env: dict | None = None,
        python: str | None = None,
        stderr=None,
        ready_timeout: float = 30.0,
        on_worker_event: Callable[[dict], None] | None = None,
        on_frame: Callable[[dict], None] | None = None,
        admission: Pacer | None | str = "pace",
    ) -> None:
        self.codec = codecs.get(fmt)
        self.admission = Pacer() if admission == "pace" else admission  # answers portbridge.admit (None: at once)
        self._on_frame = on_frame  # sees every decoded frame first (tests check them against the schemas)
        self.ready: dict | None = None
        self.worker_events: list[dict] = []  # events with id null (ready, log)
        self._on_worker_event = on_worker_event
        self._pending: dict = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = threading.Event()
        self.stray: list[dict] = []  # frames nobody waited for (id null errors, undecodable frames)
        self._runner = _Runner()
        self.process = subprocess.Popen(
            worker_command(worker_args, python),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        self._reader = threading.Thread(target=self._read, name="portbridge-client-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_timeout):
            code = self.process.poll()
            self.kill()
            raise WorkerExited(f"no ready event within {ready_timeout} s (exit code {code})")
        if self.ready is None:
            raise WorkerExited(f"worker exited before ready (exit code {self.process.wait()})")

    # -- reading -------------------------------------------------------------------

    def _read(self) -> None:
        fd = self._stdout.fileno()
        # The worker's frames may be of any length: no limit, no desync guess.
        decoder = FrameDecoder(MAX_LENGTH, MAX_LENGTH)
        try:
            while data := os.read(fd, READ_BYTES):
                for item in decoder.split(data):
                    if isinstance(item, (Empty, Oversized, StreamDesync)):
                        self.stray.append({"bad_frame": repr(item)})
                        continue
                    self._handle(item)
            if decoder.pending():
                self.stray.append({"bad_frame": f"stdout ended inside a frame ({decoder.pending()} bytes)"})
        except OSError:
            pass
        finally:
            self._closed.set()
            self._ready.set()
            with self._lock:
                pending, self._pending = self._pending, {}
            for p in pending.values():
                p._finish(None)

    def _handle(self, payload) -> None:
        """One payload (valid only during this call): decode it and route it."""
        codec = codecs.detect(payload) or self.codec
        try:
            frame = codec.decode(payload)
        except codecs.DecodeError as exc:
            self.stray.append({"undecodable": bytes(payload[:200]), "error": str(exc)})
            return
        if self._on_frame is not None:
            self._on_frame(frame)
        self._route(frame)

    def _route(self, frame: dict) -> None:
        rid = frame.get("id")
        if "event" in frame and rid is None:
            if frame["event"] == "ready":
                self.ready = frame["data"]
                self._ready.set()
            self.worker_events.append(frame)
            if self._on_worker_event is not None:
                self._on_worker_event(frame)
            return
        with self._lock:
            pending = self._pending.get(rid)
            if pending is not None and "event" not in frame:
                del self._pending[rid]
        if pending is None:
            self.stray.append(frame)
        elif "event" in frame:
            pending._event(frame)
            if frame["event"] == "callback":
                self._runner.run(self._answer_callback, pending, frame.get("data"))
            elif frame["event"] == LM_CALL and isinstance(self.admission, Pacer):
                self.admission.observe(frame.get("data"))
        else:
            pending._finish(frame)

    def _answer_callback(self, pending: Pending, data: Any) -> None:
        """Run one callback of ``pending`` (on a runner thread) and send what it gave as callback_result."""
        if not isinstance(data, dict) or not isinstance(data.get("callback_id"), str):
            self.stray.append({"bad_callback_event": data})
            return
        name, answer = data.get("name"), {"callback_id": data["callback_id"]}
        fn = pending.callbacks.get(name) if isinstance(name, str) else None
        if fn is None and name == ADMIT:
            fn = self._admitter(data.get("timeout_ms"))
        if fn is None:
            answer["error"] = {"message": f"no callback named {name!r:.100} was given with request {pending.id!r}",
                               "category": "not_found"}
        else:
            try:
                answer["result"] = fn(data.get("args"))
            except _CategorisedError as exc:
                answer["error"] = {"message": str(exc)[:10_000], "category": exc.category}
            except BaseException as exc:  # noqa: BLE001 -- whatever a callback raises becomes its error result
                answer["error"] = {"message": f"{type(exc).__name__}: {exc}"[:10_000], "category": "execution"}
        def keep(reply: dict | None) -> None:  # the reply is kept, not waited for: this thread is free at once
            if reply is not None:
                pending.callback_replies.append(reply)

        try:
            try:
                self.submit("callback_result", answer, codec=pending.codec, on_reply=keep)
            except codecs.EncodeError as exc:
                error = {"message": f"the callback's result cannot be sent: {exc}"[:10_000],
                         "category": "serialization"}
                self.submit("callback_result", {"callback_id": data["callback_id"], "error": error},
                            codec=pending.codec, on_reply=keep)
        except WorkerExited:
            return

    def _admitter(self, timeout_ms) -> Callback:
        """The built-in answer to ``portbridge.admit``: the pacer's (an error it raises keeps its category)."""
        pacer = self.admission
        if pacer is None:
            return lambda args: {"admitted": True}

        def admit(args):
            try:
                return pacer.admit(args, timeout_ms / 1000 if isinstance(timeout_ms, int) else None)
            except AdmissionError as exc:
                raise _CategorisedError(str(exc), exc.category) from None

        return admit

    # -- writing -------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self._stdin.write(data)
            self._stdin.flush()

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(encode_frame(payload))

    def next_id(self) -> int:
        return next(self._ids)

    def submit(
        self,
        command: str,
        args: dict | None = None,
        *,
        session_id: str | None = None,
        timeout_ms: int | None = None,
        meta: dict | None = None,
        notify: list[str] | None = None,
        rid=None,
        on_event: Callable[[dict], None] | None = None,
        codec=None,
        callbacks: dict[str, Callback] | None = None,
        on_reply: Callable[[dict | None], None] | None = None,
    ) -> Pending:
        """Send one request; its ``callbacks`` answer the worker's callback events (see the module doc);
        ``on_reply(reply)`` runs on the reading thread when the final reply (or None: the worker
        exited) arrives. Raises codecs.EncodeError, sending nothing, if the request cannot be encoded."""
        rid = self.next_id() if rid is None else rid
        doc = {"id": rid, "command": command, "args": args if args is not None else {}}
        if session_id is not None:
            doc["session_id"] = session_id
        if timeout_ms is not None:
            doc["timeout_ms"] = timeout_ms
        if meta is not None:
            doc["meta"] = meta
        if notify is not None:
            doc["notify"] = notify  # optional events wanted, e.g. ["lm_call"] (protocol 1.2)
        codec = codec or self.codec
        payload = codec.encode(doc)
        pending = Pending(rid, on_event, callbacks, codec)
        pending.on_reply = on_reply
        with self._lock:
            if self._closed.is_set():
                raise WorkerExited("the worker has exited")
            self._pending[rid] = pending
        try:
            self.send_frame(payload)
        except OSError as exc:
            with self._lock:
                self._pending.pop(rid, None)
            raise WorkerExited(f"cannot write to the worker: {exc}") from None
        return pending

    def request(self, command: str, args: dict | None = None, *, wait: float | None = 60.0, **kw) -> dict:
        """Send one request and return its final reply (the whole map)."""
        reply = self.submit(command, args, **kw).wait(wait)
        if reply is None:
            raise WorkerExited(f"the worker exited before answering {command!r} (exit code {self.process.poll()})")
        return reply

    def call(self, command: str, args: dict | None = None, **kw):
        """Send one request and return its result, raising RemoteError on an error reply."""
        reply = self.request(command, args, **kw)
        if not reply["success"]:
            raise RemoteError(reply["error"])
        return reply["result"]

    # -- ending ----------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> int:
        """Close the worker's stdin and wait for it to exit; returns its exit code."""
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            try:
                self.close()
            except subprocess.TimeoutExpired:
                pass
        # The reader thread reads stdout by descriptor number: closing it under the reader would let
        # it read whatever the process opens next under that number (the next worker's stdout, whose
        # ready it would steal). The worker is gone, so the reader meets the end of input and ends.
        self._reader.join(READER_EXIT_S)
        streams = [self.process.stderr] if self._reader.is_alive() else [self.process.stdout, self.process.stderr]
        for stream in streams:
            if stream is not None:
                stream.close()

    @property
    def pid(self) -> int:
        return self.process.pid

