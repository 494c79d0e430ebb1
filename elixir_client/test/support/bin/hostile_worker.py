"""Stands in for a worker that writes frames of every wrong shape: the client must
give each caller a categorised error (or, for a frame that names no caller, log it)
and keep serving. It sends a valid ready event, then answers each request by its
command:

  echo            a valid reply (the args)
  <kind>          the malformed frame `kind` (see FRAMES), then nothing more
  <kind>+echo     the malformed frame, then a valid reply to the same id
"""

import os

from peer_frames import requests, write


FRAMES = {
    "error_code_not_string": lambda i: {"id": i, "success": False, "error": {"category": "execution", "code": 5, "message": "m"}},
    "error_message_map": lambda i: {"id": i, "success": False, "error": {"category": "execution", "code": "x", "message": {"a": 1}}},
    "error_not_map": lambda i: {"id": i, "success": False, "error": "boom"},
    "error_missing": lambda i: {"id": i, "success": False},
    "error_category_list": lambda i: {"id": i, "success": False, "error": {"category": [1], "code": "x", "message": "m"}},
    "error_severity_map": lambda i: {"id": i, "success": False, "error": {"category": "brand_new", "code": "x", "message": "m", "severity": {}, "recovery": 3}},
    "log_message_map": lambda i: {"id": None, "event": "log", "data": {"level": "warning", "message": {"nested": [1, 2]}}},
    "log_data_list": lambda i: {"id": None, "event": "log", "data": [1, 2, 3]},
    "log_level_map": lambda i: {"id": None, "event": "log", "data": {"level": {"x": 1}, "message": "hi"}},
    "event_name_number": lambda i: {"id": i, "event": 5, "data": {}},
    "event_id_map": lambda i: {"id": {"x": 1}, "event": "chunk", "data": {}},
    "reply_id_map": lambda i: {"id": {"x": i}, "success": True, "result": 1},
    "reply_id_float": lambda i: {"id": 1.5, "success": True, "result": 1},
    "reply_unknown_id": lambda i: {"id": 987654321, "success": True, "result": 1},
    "success_not_bool": lambda i: {"id": i, "success": "yes", "result": 1},
    "not_a_map": lambda i: [i, "success"],
    "garbage": lambda i: b"\xff\xfe not json at all",
    "empty": lambda i: b"",
    "null_id_error_map": lambda i: {"id": None, "success": False, "error": {"category": 1}},
}

write({"id": None, "event": "ready", "data": {"protocol": 1, "pid": os.getpid(), "limits": {"max_frame_bytes": "lots", "shutdown_grace_s": "never"}}})

for request in requests():
    command, rid = request.get("command"), request.get("id")
    if command == "cancel":
        continue
    kind, _, then = command.partition("+")
    if kind in FRAMES:
        write(FRAMES[kind](rid))
    if kind == "echo" or then == "echo":
        write({"id": rid, "success": True, "result": request.get("args")})
