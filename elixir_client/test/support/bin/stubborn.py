"""Stands in for a worker that will not die: it sends a valid ready event, then
ignores SIGTERM and the end of its stdin. Only SIGKILL ends it (PortBridge.Reaper's
last resort). Its ready event announces a short shutdown grace (0.2 s)."""

import json
import os
import signal
import struct
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready = {
    "id": None,
    "event": "ready",
    "data": {"protocol": 1, "pid": os.getpid(), "limits": {"max_frame_bytes": 1 << 20, "shutdown_grace_s": 0.2}},
}
payload = json.dumps(ready).encode()
os.write(1, struct.pack(">I", len(payload)) + payload)
while True:
    time.sleep(3600)
