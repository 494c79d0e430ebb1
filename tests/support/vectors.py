"""Loading the golden vectors of protocol/vectors and comparing replies with them."""

from __future__ import annotations

import json
import os

from bridge.contract import protocol_dir
from bridge.devtools.framecat import from_readable, to_readable


def load(name: str, part: str = "cases") -> list[dict]:
    with open(os.path.join(protocol_dir(), "vectors", name), encoding="utf-8") as f:
        return json.load(f)[part]


def ids(cases: list[dict]) -> list[str]:
    return [case["name"] for case in cases]


def matches(expected, actual) -> bool:
    """True if ``actual`` holds every key of ``expected`` with an equal value (recursively for maps).

    Values are compared in readable form, so bytes, ext types and NaN compare by value.
    """
    actual = to_readable(actual)
    if isinstance(expected, dict) and isinstance(actual, dict) and not _is_tag(expected):
        return all(k in actual and matches(v, actual[k]) for k, v in expected.items())
    return expected == actual


def _is_tag(value: dict) -> bool:
    return len(value) == 1 and next(iter(value)).startswith("$")


def flat_error(expected: dict) -> dict:
    """bad_frames.json lists category/code at the top; a reply has them under error."""
    expected = dict(expected)
    error = {k: expected.pop(k) for k in ("category", "code") if k in expected}
    if error:
        expected["error"] = error
    return expected


__all__ = ["load", "ids", "matches", "flat_error", "from_readable"]
