"""Argument schemas of the DSPy commands (the subset of JSON Schema in ``bridge.schema``).

They are what ``describe`` shows and what the core enforces before a handler
runs, so a malformed request fails with ``validation`` before any DSPy work.
Deeper checks that need the signature (inputs, trainsets, documents) happen
in the handlers, still before any LM call.
"""

from __future__ import annotations

from ... import registry
from . import metrics, spec
from .catalog import ADAPTERS, MAX_DEMOS, MAX_TRAINSET, MODULES, OPTIMIZERS


def _object(properties: dict, required=(), description: str = "") -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


PROGRAM_ID = {
    "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
    "description": "a program's id in this scope (letters, digits, _ . : -; at most 128)",
}
REPLACE = {"type": "boolean", "default": False, "description": "replace a program of the same id"}
DEMO_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_DEMOS}

CONFIGURE_LM = _object({
    "model": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^\S+$",
              "description": "a DSPy model string such as 'openai/gpt-4o-mini', or 'offline' (built-in, "
                             "deterministic, no network)"},
    "api_key": {"type": "string", "minLength": 1, "maxLength": 8192,
                "description": "the provider's key; never echoed, logged or exported"},
    "api_base": {"type": "string", "maxLength": 2048, "pattern": r"^https?://\S+$",
                 "description": "the provider's base URL, e.g. http://127.0.0.1:8000/v1"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    "cache": {"type": "boolean", "default": False,
              "description": "DSPy's response cache; off by default (it is process-wide and keyed "
                             "without api_base or api_key)"},
    "num_retries": {"type": "integer", "minimum": 0, "maximum": 10,
                    "description": "retries of transient LM failures (default 3)"},
    "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 3600,
                  "description": "the LM client's read timeout; a request's timeout_ms shortens it"},
}, ["model"], "with session_id: that session's LM; without: the global LM (used by sessions that have none)")

TYPE_HELP = ("signature: 'question, context -> answer' (every field a str), or {\"name\", \"instructions\", "
             "\"inputs\": {field: {\"type\", \"desc\"}}, \"outputs\": {...}} with types str, int, float, bool, "
             "list[T], dict[str, T], optional[T], {\"literal\": [...]}, {\"object\": {field: {...}}, \"name\"}")

CREATE_PROGRAM = _object({
    "signature": {"anyOf": [{"type": "string", "minLength": 3, "maxLength": spec.MAX_STRING_CHARS},
                            {"type": "object"}], "description": TYPE_HELP},
    "module": {"enum": list(MODULES), "default": "Predict"},
    "adapter": {"enum": list(ADAPTERS), "default": "chat",
                "description": "how prompts and answers are formatted: " + "; ".join(
                    f"{name}: {text}" for name, text in ADAPTERS.items())},
    "program_id": PROGRAM_ID,
    "instructions": {"type": "string", "maxLength": spec.MAX_INSTRUCTIONS_CHARS,
                     "description": "the task description (overrides the signature's)"},
    "replace": REPLACE,
}, ["signature"])

EXECUTE_PROGRAM = _object({
    "program_id": PROGRAM_ID,
    "inputs": {"type": "object", "maxProperties": spec.MAX_FIELDS,
               "description": "one value per input field of the signature, of its type"},
    "stream": {"type": "boolean", "default": False,
               "description": "send chunk events {field, text, predictor, last} as the LM writes"},
}, ["program_id", "inputs"])

NO_ARGS = registry.NO_ARGS
BY_ID = _object({"program_id": PROGRAM_ID}, ["program_id"])

IMPORT_PROGRAM = _object({
    "program": {"type": "object", "description": "a document from export_program"},
    "program_id": {**PROGRAM_ID, "description": "the id to import as (default: the document's)"},
    "replace": REPLACE,
}, ["program"])

EXAMPLE = _object({"inputs": {"type": "object"}, "outputs": {"type": "object"}}, ["inputs", "outputs"])

OPTIMIZE_PROGRAM = _object({
    "program_id": PROGRAM_ID,
    "optimizer": {"enum": list(OPTIMIZERS)},
    "trainset": {"type": "array", "minItems": 1, "maxItems": MAX_TRAINSET, "items": EXAMPLE},
    "metric": {"enum": list(metrics.METRICS), "default": "exact_match"},
    "metric_fields": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": spec.MAX_FIELDS,
                      "description": "the outputs the metric compares (default: each example's labelled ones)"},
    "options": {**_object({
        "k": {**DEMO_COUNT, "minimum": 1},
        "max_bootstrapped_demos": DEMO_COUNT,
        "max_labeled_demos": DEMO_COUNT,
        "max_rounds": {"type": "integer", "minimum": 1, "maximum": 10},
        "max_errors": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET},
        "metric_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    }), "default": {}},
    "save_as": {**PROGRAM_ID, "description": "keep the original and save the optimised program under this id"},
    "replace": {**REPLACE, "description": "with save_as: replace an existing program of that id"},
}, ["program_id", "optimizer", "trainset"])

LM_USAGE = _object({"reset": {"type": "boolean", "default": False,
                              "description": "zero the scope's counters after reading them"}})
