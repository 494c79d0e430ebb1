"""A real parent process for orphan tests: it spawns a worker that holds its pipes, then waits.

    python -m tests.support.parent [--share-stdin] WORKER-ARGS...

It waits for the worker's ``ready`` (read through FrameDecoder), prints one JSON
line ``{"worker": pid, "sibling": pid or null}`` and sleeps until killed. With
``--share-stdin`` it also starts a sibling process (``sleep``, in a session of its
own) that holds the write end of the worker's stdin: the worker then sees no end
of input when this parent dies, and must notice the death itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from bridge.devtools.client import worker_command
from bridge.framing import FrameDecoder


def main(argv: list[str]) -> int:
    share = argv[:1] == ["--share-stdin"]
    worker_args = argv[1:] if share else argv
    worker = subprocess.Popen(worker_command(worker_args), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    decoder, frames = FrameDecoder(), []
    while not frames:
        data = os.read(worker.stdout.fileno(), 65536)
        if not data:
            raise SystemExit(f"the worker exited before ready (exit code {worker.wait()})")
        frames = decoder.split(data)
    if b'"ready"' not in bytes(frames[0]):
        raise SystemExit(f"the worker's first frame is not ready: {bytes(frames[0])[:200]!r}")
    sibling = None
    if share:
        sibling = subprocess.Popen(["sleep", "300"], pass_fds=[worker.stdin.fileno()], start_new_session=True)
    print(json.dumps({"worker": worker.pid, "sibling": sibling.pid if sibling else None}), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
