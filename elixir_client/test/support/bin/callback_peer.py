"""Stands in for a worker that calls back, to test the client's side of callbacks
(PROTOCOL.md, "Callbacks") with callback events of every shape, including ones a
real worker never sends. One thread, no dependencies. After a valid ready event:

  ask {"calls": [{"name", "args", "timeout_ms"?}, ...]}
        sends one `callback` event per call at once, waits for every
        `callback_result`, answers [{"result": ...} | {"error": {...}}, ...]
        in the order of the calls
  raw {"data": <anything>, "then": "echo"?}
        sends a `callback` event whose data is `data` as given; answers at once
        with {"sent": true}
  echo  answers its args (served while asks wait: callbacks may nest)

Every `callback_result` gets its own reply; one for an unknown callback id gets a
`not_found` error reply, as the real worker's does.
"""

import itertools
import os

from peer_frames import requests, write

ids = itertools.count(1)
waiting = {}  # callback_id -> (ask id, index)
asks = {}     # ask id -> [results or None]


def reply(rid, result) -> None:
    write({"id": rid, "success": True, "result": result})


write({"id": None, "event": "ready", "data": {"protocol": 1, "protocol_minor": 1, "features": ["callbacks"],
                                              "pid": os.getpid(), "limits": {}}})
for request in requests():
    rid, command, args = request["id"], request["command"], request.get("args") or {}
    if command == "ask":
        calls = args["calls"]
        asks[rid] = [None] * len(calls)
        for i, call in enumerate(calls):
            cid = f"cb-{next(ids)}"
            waiting[cid] = (rid, i)
            data = {"callback_id": cid, "name": call["name"], "args": call.get("args", {})}
            if "timeout_ms" in call:
                data["timeout_ms"] = call["timeout_ms"]
            write({"id": rid, "event": "callback", "data": data})
    elif command == "raw":
        write({"id": rid, "event": "callback", "data": args["data"]})
        reply(rid, {"sent": True})
    elif command == "callback_result":
        cid = args.get("callback_id")
        if cid not in waiting:
            write({"id": rid, "success": False, "error": {"category": "not_found", "code": "unknown_callback",
                                                          "message": f"no callback {cid!r} is waiting"}})
            continue
        reply(rid, {"accepted": True})
        ask, i = waiting.pop(cid)
        asks[ask][i] = {k: args[k] for k in ("result", "error") if k in args}
        if all(r is not None for r in asks[ask]):
            reply(ask, asks.pop(ask))
    elif command == "echo":
        reply(rid, args)
    elif command == "cancel":
        target = args.get("request_id")
        if target in asks:
            asks.pop(target)
            for cid in [c for c, (a, _) in waiting.items() if a == target]:
                waiting.pop(cid)
            write({"id": target, "success": False, "error": {"category": "cancelled", "code": "cancelled",
                                                             "message": "cancelled"}})
        reply(rid, {"cancelled": True})
