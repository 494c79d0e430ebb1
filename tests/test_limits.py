"""protocol/limits.json is the one home of limits and defaults: the worker's options and envelope
checks use its values, and a real worker reports them."""

from __future__ import annotations

import argparse

from bridge import cli, envelope, framing
from bridge.contract import read_json
from bridge.limits import Limits

FILE = read_json("limits.json")
OPTION = {  # limits.json key -> the worker option that changes it
    "max_frame_bytes": "max_frame_bytes", "max_frame_values": "max_frame_values",
    "max_concurrency": "max_concurrency", "max_queue": "max_queue", "max_sessions": "max_sessions",
    "session_ttl_s": "session_ttl", "shutdown_grace_s": "shutdown_grace", "max_callbacks": "max_callbacks",
}


def test_the_file_is_flat_numbers_in_three_sections():
    assert set(FILE) == {"version", "description", "worker", "envelope", "framing"}
    for section in ("worker", "envelope", "framing"):
        assert FILE[section] and all(type(v) in (int, float) for v in FILE[section].values()), section


def test_worker_option_defaults_are_the_file():
    parser = argparse.ArgumentParser()
    cli._add_worker_options(parser)
    defaults = parser.parse_args([])
    assert set(OPTION) == set(FILE["worker"])
    for key, dest in OPTION.items():
        assert getattr(defaults, dest) == FILE["worker"][key], key
    assert Limits().describe() == FILE["worker"]
    assert cli._worker_config(defaults).limits == Limits()


def test_envelope_and_framing_limits_are_the_file():
    e = FILE["envelope"]
    assert (envelope.MAX_ID_CHARS, envelope.MAX_COMMAND_CHARS, envelope.MAX_SESSION_ID_CHARS,
            envelope.MAX_TIMEOUT_MS, envelope.MAX_META_ENTRIES) == (
        e["max_id_chars"], e["max_command_chars"], e["max_session_id_chars"], e["max_timeout_ms"],
        e["max_meta_entries"])
    assert framing.DEFAULT_DESYNC_BYTES == FILE["framing"]["desync_bytes"]
    assert framing.DEFAULT_MAX_FRAME_BYTES == FILE["worker"]["max_frame_bytes"]


def test_a_real_worker_reports_the_file_defaults(spawn):
    w = spawn()
    assert w.ready["limits"] == FILE["worker"]
    assert w.call("describe")["limits"] == FILE["worker"]
