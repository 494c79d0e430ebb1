"""The floor: the smallest honest framed Python echo a Port worker can be.

Read a 4-byte big-endian length and that many bytes, decode the payload
(orjson or msgpack, picked by its first byte as ``--format auto`` does), build
the reply map, encode it, write header + payload in one ``os.write``. Nothing
else: no envelope checks, no threads, no stats, no stdout guard. It answers
``ping`` with ``{"pong": true, "pid"}`` and anything else with its ``args``
(as ``echo`` does), so the benchmarks drive it with the very frames they send
``portbridge worker``. Like the worker it writes a ``ready`` event first and
exits at the end of its input.

    python benchmarks/floor.py
"""

import os
import struct
import sys

import msgpack
import orjson

HEADER = struct.Struct(">I")
PID = os.getpid()


def main() -> int:
    read = sys.stdin.buffer.read  # a BufferedReader: the usual way to read a pipe in Python
    out = sys.stdout.fileno()
    packer = msgpack.Packer(use_bin_type=True)
    ready = orjson.dumps({"id": None, "event": "ready", "data": {"protocol": 1, "pid": PID}})
    os.write(out, HEADER.pack(len(ready)) + ready)
    while True:
        header = read(4)
        if len(header) < 4:
            return 0
        (length,) = HEADER.unpack(header)
        payload = read(length)
        if payload[:1] == b"{":
            doc = orjson.loads(payload)
            encode = orjson.dumps
        else:
            doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            encode = packer.pack
        result = {"pong": True, "pid": PID} if doc["command"] == "ping" else doc.get("args", {})
        reply = encode({"id": doc["id"], "success": True, "result": result, "meta": {}})
        view = memoryview(HEADER.pack(len(reply)) + reply) if len(reply) < 65536 else None
        if view is None:  # a large reply: no copy to prepend the header
            _write_all(out, HEADER.pack(len(reply)))
            view = memoryview(reply)
        _write_all(out, view)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    sys.exit(main())
