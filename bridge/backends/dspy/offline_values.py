"""The ``offline`` model's values: one valid for each way DSPy's adapters state an output's type.

An adapter tells the LM an output's type in one of three ways, and each has a
reader here:

* a note (ChatAdapter and JSONAdapter for every field, XMLAdapter for flat
  ones): ``must be a single int value``, ``must be True or False``, ``must
  exactly match ... one of: a; b``, ``must adhere to the JSON schema: {...}``
  (``value_for_note``, ``from_schema``);
* the type's name in the field list, ``(dict[str, int])``, ``(Union[float,
  NoneType])`` (TwoStepAdapter, and XMLAdapter's nested fields): read with the
  backend's own annotation parser, never evaluated (``schema_of_name``);
* XMLAdapter's nested skeleton, ``<owner><team>...</team></owner>``, whose
  leaves carry no type at all: a leaf gets ``0`` or ``1``, text that pydantic
  reads as a str, an int, a float or a bool (``from_skeleton``). A literal or
  a dict inside an object is what no XML prompt describes; DSPy's JSON
  fallback, as with any LM that guesses wrong, asks again with a schema.

Values are drawn from ``rng`` (seeded by the prompt), strings quote the
subject (the first input's first line). ``to_xml`` writes a value as
XMLAdapter spells nested values. Pure Python.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET

from ...errors import BridgeError
from . import typesyntax

MAX_SCHEMA_DEPTH = 20


def render(value) -> str:
    """A value as the answer text DSPy parses back: strings bare, booleans as True/False, the rest JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def value_for_note(note: str, name: str, subject: str, tag: str, rng: random.Random):
    """A value valid for one of the adapters' output notes (an empty note: a str)."""
    if note == "must be True or False":
        return rng.random() < 0.5
    if note == "must be a single int value":
        return rng.randrange(100)
    if note == "must be a single float value":
        return round(rng.random() * 100, 2)
    for prefix in ("must exactly match (no extra characters) one of: ", "must be one of: "):
        if note.startswith(prefix):
            options = note[len(prefix):].split("; ")
            return options[rng.randrange(len(options))]
    prefix = "must adhere to the JSON schema: "
    if note.startswith(prefix):
        try:
            schema = json.loads(note[len(prefix):])
        except ValueError:
            schema = {"type": "string"}
        return from_schema(schema, schema, name, subject, tag, rng)
    return f"{name} {tag}: {subject}"


def from_schema(schema: dict, root: dict, name: str, subject: str, tag: str, rng: random.Random, depth: int = 0):
    """A value valid for a (pydantic-generated) JSON schema."""
    if depth > MAX_SCHEMA_DEPTH:
        return None
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        return from_schema(target, root, name, subject, tag, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return from_schema(options[0], root, name, subject, tag, rng, depth + 1)
    kind = schema.get("type")
    if kind == "string":
        return f"{name} {tag}: {subject}" if depth == 0 else f"{name} {tag}"
    if kind == "integer":
        return rng.randrange(100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        item = schema.get("items", {"type": "string"})
        return [from_schema(item, root, name, subject, tag, rng, depth + 1) for _ in range(2)]
    if kind == "object":
        props = schema.get("properties")
        if props:
            return {key: from_schema(sub, root, key, subject, tag, rng, depth + 1) for key, sub in props.items()}
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {"type": "string"}
        return {f"{name}_{i}": from_schema(sub, root, name, subject, tag, rng, depth + 1) for i in (1, 2)}
    return f"{name} {tag}"


_SCHEMAS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
            "bool": {"type": "boolean"}}


def schema_of_name(type_name: str) -> dict | None:
    """The JSON schema of a type as DSPy names it in a prompt (``list[Union[int, NoneType]]``), or None.

    None for what the whitelist does not name (a pydantic model's class name,
    say): the caller then has only the prompt's other hints.
    """
    try:
        parsed = typesyntax.parse_text(type_name.replace("NoneType", "None"), "type", MAX_SCHEMA_DEPTH)
    except BridgeError:
        return None
    return _schema(parsed)


def _schema(parsed) -> dict | None:
    if isinstance(parsed, str):
        return _SCHEMAS.get(parsed)
    (kind, inner), = parsed.items()
    if kind == "literal":
        # XMLAdapter reads nested leaves back as text, and a text never validates as a number or a
        # boolean option of a Literal (DSPy 3.4.1): a string option is the one answer that parses.
        return {"enum": [v for v in inner if isinstance(v, str)] or inner}
    sub = _schema(inner)
    if sub is None:
        return None
    if kind == "list":
        return {"type": "array", "items": sub}
    if kind == "dict":
        return {"type": "object", "additionalProperties": sub}
    return {"anyOf": [sub, {"type": "null"}]}


def from_skeleton(skeleton: str, rng: random.Random):
    """A value shaped as XMLAdapter's nested skeleton of one field (``<o><a>...</a><l><item>...</item></l></o>``)."""
    try:
        root = ET.fromstring(skeleton)
    except ET.ParseError:
        return str(rng.randrange(2))
    return _shaped(root, rng)


def _shaped(element: ET.Element, rng: random.Random):
    children = list(element)
    if not children:
        return str(rng.randrange(2))  # pydantic reads "0" and "1" as a str, an int, a float or a bool
    if all(child.tag == "item" for child in children):
        return [_shaped(child, rng) for child in children]
    return {child.tag: _shaped(child, rng) for child in children}


def to_xml(value, tag: str) -> str:
    """``value`` as XMLAdapter writes a nested field: lists as ``<item>``s, maps as child elements."""
    if isinstance(value, list):
        inner = "".join(to_xml(item, "item") for item in value)
        return f"<{tag}>{inner}</{tag}>" if inner else f"<{tag} />"
    if isinstance(value, dict):
        return f"<{tag}>{''.join(to_xml(item, str(key)) for key, item in value.items())}</{tag}>"
    if value is None:
        return f"<{tag} />"
    return f"<{tag}>{escape(render(value))}</{tag}>"


NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # what XML 1.0 cannot hold


def escape(text: str) -> str:
    """Text inside an XML element (XMLAdapter parses the answer with ElementTree): escaped, and what no XML
    document may contain (most control characters) left out."""
    return NOT_XML.sub("", text).replace("&", "&amp;").replace("<", "&lt;")
