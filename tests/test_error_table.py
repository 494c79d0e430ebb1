"""The shared error table: consistent, a superset of the design's table, and what the schemas name."""

from __future__ import annotations

import json
import os
import re

import pytest

from bridge.contract import protocol_dir
from bridge.errors import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(os.path.dirname(ROOT), "shared", "DESIGN.md")


def test_rows_are_complete_and_consistent():
    data = table()
    for name, row in data["categories"].items():
        assert set(row) == {"severity", "recovery", "retryable", "description"}, name
        assert row["severity"] in data["severities"] and row["recovery"] in data["recoveries"]
        assert isinstance(row["retryable"], bool) and row["description"]
        # retrying is pointless exactly when the recovery says so
        assert row["retryable"] == (row["recovery"] not in ("abandon", "restart_worker")), name


@pytest.mark.skipif(not os.path.exists(DESIGN), reason="shared/DESIGN.md is not beside this checkout")
def test_design_table_rows_are_kept_unchanged():
    with open(DESIGN, encoding="utf-8") as f:
        rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (\w+) \| (\w+) \|$", f.read(), re.M)
    assert len(rows) >= 16
    categories = table()["categories"]
    for name, severity, recovery in rows:
        assert name in categories, f"{name} of DESIGN.md is missing from protocol/errors.json"
        assert (categories[name]["severity"], categories[name]["recovery"]) == (severity, recovery), name


def test_error_schema_names_exactly_the_table():
    with open(os.path.join(protocol_dir(), "schemas", "error.schema.json")) as f:
        schema = json.load(f)
    data = table()
    assert sorted(schema["properties"]["category"]["enum"]) == sorted(data["categories"])
    assert schema["properties"]["severity"]["enum"] == data["severities"]
    assert sorted(schema["properties"]["recovery"]["enum"]) == sorted(data["recoveries"])
