"""Checking frames from a real worker against protocol/schemas (JSON Schema 2020-12)."""

from __future__ import annotations

import json
import os

import jsonschema
from referencing import Registry, Resource

from bridge.contract import protocol_dir
from bridge.devtools.framecat import to_readable


def _load() -> dict:
    folder = os.path.join(protocol_dir(), "schemas")
    schemas = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            schemas[name] = json.load(f)
    return schemas


SCHEMAS = _load()
REGISTRY = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)
VALIDATORS = {
    name: jsonschema.Draft202012Validator(SCHEMAS[f"{name}.schema.json"], registry=REGISTRY)
    for name in ("request", "response", "event", "callback_result", "lm_call", "admit")
}
# What a client answers to portbridge.admit (admit.schema.json's $defs/result, with its 1.3 lease).
VALIDATORS["admit_result"] = jsonschema.Draft202012Validator(
    {"$ref": SCHEMAS["admit.schema.json"]["$id"] + "#/$defs/result"}, registry=REGISTRY)


def violations(frame: dict) -> list[str]:
    """Why ``frame`` (a decoded reply or event) breaks the protocol's schemas; [] if it does not."""
    kind = "event" if "event" in frame else "response"
    readable = to_readable(frame)  # bytes and the like are opaque values to the schema
    return [f"{kind}: {e.json_path}: {e.message}" for e in VALIDATORS[kind].iter_errors(readable)]


class FrameChecker:
    """An ``on_frame`` hook that keeps every frame and records every violation, for a fixture to assert on."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.frames: list[dict] = []

    def __call__(self, frame: dict) -> None:
        self.frames.append(frame)
        for problem in violations(frame):
            self.problems.append(f"{problem} in {str(frame)[:300]}")
