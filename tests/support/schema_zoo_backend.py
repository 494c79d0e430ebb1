"""A test backend whose one command uses every schema keyword the registry supports.

Loaded with ``--backend-module tests.support.schema_zoo_backend:backend`` by the
fuzz suites, so hostile values meet the real argument validator in a real
worker; ``zoo`` answers ``{"ok": true}`` for any args that pass. ``SCHEMA`` is
also the oracle's copy: a reference JSON Schema validator must agree with the
worker on every value.
"""

from __future__ import annotations

from bridge.backends import Backend

SCHEMA = {
    "type": "object",
    "properties": {
        "mode": {"enum": ["fast", "slow", 1, None]},
        "exact": {"const": "exact"},
        "name": {"type": "string", "minLength": 1, "maxLength": 16, "pattern": "^[a-z]+$"},
        "count": {"type": "integer", "minimum": 0, "maximum": 100},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 4},
        "either": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"enum": ["a", "b"]}}]},
        "nested": {
            "type": "object",
            "properties": {"inner": {"enum": ["x"]}},
            "additionalProperties": {"type": "integer"},
            "maxProperties": 3,
        },
        "nullable": {"type": ["string", "null"]},
    },
    "required": ["mode"],
    "additionalProperties": False,
}


class SchemaZoo(Backend):
    name = "schema_zoo"

    def register(self, registry) -> None:
        registry.command("zoo", schema=SCHEMA, backend=self.name)(zoo)


def zoo(ctx, args):
    """Accept anything the schema accepts."""
    return {"ok": True}


backend = SchemaZoo()
