"""Real worker processes for tests: a byte-level one and the request-level client.

``RawWorker`` talks to ``python -m bridge worker`` with bytes (for framing and
bad-frame tests); ``bridge.client.WorkerClient`` is the request-level client.
Both are started by the fixtures in ``tests/conftest.py``, which also check
that no worker process outlives its test.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from bridge import codecs
from bridge.client import kill_process, worker_command
from bridge.framing import HEADER, encode_frame
from tests.support.schemas import violations

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        self._buf = bytearray()
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

    def _fill(self, need: int, deadline: float) -> bool:
        fd = self.process.stdout.fileno()
        while len(self._buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited for {need} bytes, have {len(self._buf)}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read_frame(self, timeout: float = 10.0) -> bytes | None:
        """The next payload, or None if stdout ended cleanly between frames."""
        deadline = time.monotonic() + timeout
        if not self._fill(4, deadline):
            assert not self._buf, f"stdout ended inside a header: {bytes(self._buf)!r}"
            return None
        (n,) = HEADER.unpack(self._buf[:4])
        if not self._fill(4 + n, deadline):
            raise AssertionError(f"stdout ended inside a frame of {n} bytes")
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return payload

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

    def close_stdin(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def stderr_text(self) -> str:
        if not self.stderr_path:
            return ""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self) -> None:
        kill_process(self.process)
        if self._stderr not in (None, subprocess.DEVNULL):
            self._stderr.close()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def python() -> str:
    return sys.executable
