"""Real worker processes for tests: a byte-level one and the request-level client.

``RawWorker`` talks to ``python -m bridge worker`` with bytes (for framing and
bad-frame tests); ``bridge.devtools.client.WorkerClient`` is the request-level client.
Both are started by the fixtures in ``tests/conftest.py``, which also check
that no worker process outlives its test.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import subprocess
import tempfile
import time

from bridge import codecs
from bridge.devtools.client import WorkerClient, worker_command
from bridge.processes import alive as pid_alive, kill_process
from bridge.framing import MAX_LENGTH, Empty, FrameDecoder, Oversized, encode_frame
from tests.support.schemas import FrameChecker, violations

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scaled(seconds: float) -> float:
    """``seconds`` for this machine as loaded now: times the 1-minute load average per
    CPU (at least 1x, at most 20x). A read's timeout bounds how long a busy machine may
    take to start a worker and answer; what the tests guard against (a worker that never
    answers) lies beyond any such bound."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        load = 0.0
    return seconds * min(max(load, 1.0), 20.0)


def worker_env(**extra: str) -> dict:
    """Environment for a spawned worker: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


class RawWorker:
    """A worker process driven with raw bytes; every read has a timeout."""

    def __init__(self, *worker_args: str, env: dict | None = None, stderr_path: str | None = None,
                 cwd: str | None = None) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            worker_command(worker_args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env or worker_env(),
            bufsize=0,
            cwd=cwd,
        )
        self._decoder = FrameDecoder(MAX_LENGTH, MAX_LENGTH)  # whatever length the worker writes
        self._frames: collections.deque[bytes] = collections.deque()
        self.ready = self.read_doc()
        assert self.ready.get("event") == "ready", self.ready

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send_doc(self, doc, fmt: str = "json") -> None:
        self.send(encode_frame(codecs.get(fmt).encode(doc)))

    def read_frame(self, timeout: float = 10.0) -> bytes | None:
        """The next payload, or None if stdout ended cleanly between frames. ``timeout``
        is for an idle machine (see ``scaled``)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole frame within {timeout} s ({self._decoder.pending()} bytes of one)")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                assert not self._decoder.pending(), f"stdout ended inside a frame ({self._decoder.pending()} bytes)"
                return None
            self._decoder.feed(chunk)
            for item in self._decoder.frames():
                assert not isinstance(item, (Empty, Oversized)), f"the worker wrote {item!r}"
                self._frames.append(bytes(item))
        return self._frames.popleft()

    def read_doc(self, timeout: float = 10.0):
        payload = self.read_frame(timeout)
        if payload is None:
            return None
        codec = codecs.detect(payload)
        assert codec is not None, f"worker wrote a frame that is not a map: {payload[:40]!r}"
        doc = codec.decode(payload)
        problems = violations(doc)
        assert not problems, f"frame breaks protocol/schemas: {problems} in {str(doc)[:300]}"
        return doc

    def read_reply(self, timeout: float = 10.0, events: list | None = None):
        """The next final reply, collecting events on the way into ``events``."""
        while True:
            doc = self.read_doc(timeout)
            if doc is None or "event" not in doc:
                return doc
            if events is not None:
                events.append(doc)

    def request(self, doc, fmt: str = "json", timeout: float = 10.0):
        self.send_doc(doc, fmt)
        return self.read_reply(timeout)

    def read_to_end(self, timeout: float = 20.0, events: list | None = None) -> list[dict]:
        """Every final reply until stdout ends (a stream that ends inside a frame fails the test);
        events go to ``events`` when given."""
        replies = []
        while (doc := self.read_doc(timeout)) is not None:
            if "event" not in doc:
                replies.append(doc)
            elif events is not None:
                events.append(doc)
        return replies

    def close_stdin(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def stderr_text(self) -> str:
        return read_stderr(self.stderr_path) if self.stderr_path else ""

    def kill(self) -> None:
        kill_process(self.process)
        if self._stderr not in (None, subprocess.DEVNULL):
            self._stderr.close()


def read_stderr(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


@contextlib.contextmanager
def checked_client(folder, *worker_args: str, env: dict | None = None, fmt: str = "json", **kw):
    """A started WorkerClient (``.stderr_path``; ``.frames``, every frame it received), stopped on
    exit; fails if a frame broke protocol/schemas or the process outlived it."""
    checker = FrameChecker()
    fd, stderr_path = tempfile.mkstemp(prefix="worker-", suffix=".stderr", dir=str(folder))
    with open(fd, "wb") as stderr:
        client = WorkerClient(list(worker_args), fmt=fmt, env=env or worker_env(), stderr=stderr,
                              on_frame=checker, **kw)
    client.stderr_path = stderr_path
    client.frames = checker.frames
    try:
        yield client
    finally:
        client.__exit__(None, None, None)  # closes stdin, waits, kills one that does not exit
        assert not pid_alive(client.pid), f"worker {client.pid} outlived its test"
        assert not checker.problems, "frames broke protocol/schemas:\n" + "\n".join(checker.problems[:10])
