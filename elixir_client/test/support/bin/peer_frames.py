"""Frames for the stand-in peers in this folder (no dependency on portbridge):
4-byte big-endian length, then a JSON payload (or raw bytes, for broken frames)."""

import json
import os
import struct
import sys


def write(frame) -> None:
    payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
    try:
        os.write(1, struct.pack(">I", len(payload)) + payload)
    except BrokenPipeError:  # the client closed the port: nobody to answer
        sys.exit(0)


def requests():
    """Each request read from stdin, decoded, until stdin ends."""
    stdin = sys.stdin.buffer
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return
        (n,) = struct.unpack(">I", header)
        yield json.loads(stdin.read(n))
