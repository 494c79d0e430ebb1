"""Field types from data: a whitelist, a canonical form, and a value checker.

Nothing a client sends is ever evaluated or imported: a type is either one of
the names below or a small map, parsed here by hand.

    "str" | "int" | "float" | "bool"
    "list[T]" | "dict[str, T]" | "optional[T]"      (also List/Dict/Optional, T | None)
    "Literal['a', 1, True]"                        (annotation syntax: ``typesyntax``)
    {"list": T} | {"dict": T} | {"optional": T}
    {"literal": [v, ...]}                          (strings, integers, booleans)
    {"object": {field: {"type": T, "desc": "..."}}, "name": "Item"}
    {"object": [{"name": field, "type": T, "desc": "..."}, ...], "name": "Item"}   (fields in order)
    "history" | "image"                            (inputs only, not nested; also dspy.History, dspy.Image)

``history`` is DSPy's ``dspy.History``: ``{"messages": [{field: value}, ...]}``,
earlier turns of the conversation, each with the signature's fields.
``image`` is ``dspy.Image``: ``{"url": "https://..."}`` or ``{"url":
"data:image/png;base64,..."}``, never a local path (DSPy would read the file),
at most ``MAX_IMAGE_CHARS`` characters.

``parse`` returns the canonical form: the string spelling wherever the type can
be written as one (no literal or object inside), maps otherwise. ``check``
validates a JSON value against a canonical type, as a client's inputs are
checked before any LM call. This module imports nothing from DSPy.
"""

from __future__ import annotations

import keyword
import re

from ...errors import validation_error
from . import typesyntax

PRIMITIVES = ("str", "int", "float", "bool")
MEDIA = ("history", "image")  # DSPy's own types, for inputs only
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_DEPTH = 6
MAX_LITERALS = 100
MAX_LITERAL_CHARS = 200
MAX_OBJECT_FIELDS = 32
MAX_DESC_CHARS = 2000
INT_RANGE = (-(2**63), 2**63 - 1)
MAX_HISTORY_MESSAGES = 200
MAX_IMAGE_CHARS = 8 * 1024 * 1024  # a data: URL of about 6 MB of image
IMAGE_URL = re.compile(r"^(https?://\S+|data:image/(png|jpeg|jpg|gif|webp);base64,[A-Za-z0-9+/=\s]+)$")


class Budget:
    """Counts type nodes across one signature, so a huge nested type is refused early."""

    def __init__(self, max_nodes: int) -> None:
        self.left = max_nodes
        self.max_nodes = max_nodes

    def spend(self, path: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise validation_error("signature_too_large", f"{path}: the signature has more than "
                                   f"{self.max_nodes} type nodes", path=path, max_type_nodes=self.max_nodes)


def field_name_error(name, path: str):
    """Why ``name`` cannot name a field (or None): an identifier, not a keyword, not private."""
    if not isinstance(name, str) or not NAME.match(name):
        return validation_error("bad_field_name", f"{path}: field names must match {NAME.pattern}, got {name!r}",
                                path=path)
    if keyword.iskeyword(name):
        return validation_error("bad_field_name", f"{path}: {name!r} is a Python keyword", path=path)
    return None


# -- parsing --------------------------------------------------------------------------


def parse(spec, path: str, budget: Budget, depth: int = 0):
    """A client's type (string or map) -> its canonical form; raises validation errors."""
    if depth > MAX_DEPTH:
        raise validation_error("type_too_deep", f"{path}: types nest at most {MAX_DEPTH} levels", path=path)
    if isinstance(spec, str):
        spec = _from_text(spec, path, depth)  # annotation syntax -> a name, or the map form read below
        if isinstance(spec, str):
            budget.spend(path)
            return spec
    budget.spend(path)
    if not isinstance(spec, dict) or len(spec) == 0:
        raise _bad(path, spec)
    keys = set(spec)
    if keys == {"literal"}:
        return {"literal": _literal_values(spec["literal"], path)}
    if keys <= {"object", "name"} and "object" in keys:
        return _parse_object(spec, path, budget, depth)
    if len(keys) == 1 and next(iter(keys)) in ("list", "dict", "optional"):
        kind = next(iter(keys))
        inner = parse(spec[kind], f"{path}.{kind}", budget, depth + 1)
        return _compose(kind, inner)
    raise _bad(path, spec)


def _bad(path: str, spec):
    return validation_error(
        "bad_type", f"{path}: unknown type {spec!r}"[:300] + "; use str, int, float, bool, list[T], dict[str, T], "
        "optional[T], Literal[...], {\"literal\": [...]}, {\"object\": {...}}, or for an input history or image",
        path=path)


def _compose(kind: str, inner):
    """``kind`` of ``inner``, spelled as a string when ``inner`` is one."""
    if kind == "optional" and allows_missing(inner):
        return inner  # Optional[Optional[T]] is Optional[T], in Python as here
    if isinstance(inner, str):
        return f"dict[str, {inner}]" if kind == "dict" else f"{kind}[{inner}]"
    return {kind: inner}


def _from_text(text: str, path: str, depth: int):
    """A type in annotation syntax (``list[str]``, ``Literal['a', 'b']``, ``int | None``): a name or the map form."""
    parsed = typesyntax.parse_text(text, path, MAX_DEPTH - depth)
    if parsed in MEDIA and depth > 0:
        raise validation_error("bad_type", f"{path}: {parsed} is a field's own type, not nested in another",
                               path=path)
    return parsed


def _literal_values(values, path: str) -> list:
    if not isinstance(values, list) or not values or len(values) > MAX_LITERALS:
        raise validation_error("bad_type", f"{path}.literal: a list of 1 to {MAX_LITERALS} values", path=path)
    seen = []
    for i, value in enumerate(values):
        where = f"{path}.literal[{i}]"
        if isinstance(value, str):
            # DSPy tells the LM the options joined by "; ": an option containing it is ambiguous to any model.
            if not value or len(value) > MAX_LITERAL_CHARS or "; " in value or "\n" in value:
                raise validation_error("bad_type", f"{where}: literal strings have 1 to {MAX_LITERAL_CHARS} "
                                       "characters, no newline and no '; '", path=where)
        elif isinstance(value, bool) or (isinstance(value, int) and INT_RANGE[0] <= value <= INT_RANGE[1]):
            pass
        else:
            raise validation_error("bad_type", f"{where}: literal values are strings, integers or booleans",
                                   path=where)
        if any(value == s and type(value) is type(s) for s in seen):
            raise validation_error("bad_type", f"{where}: duplicate literal value {value!r}", path=where)
        seen.append(value)
    return seen


def field_map(fields, path: str):
    """Fields given as a list of ``{"name", "type", "desc"}`` (the form that keeps their order through
    any client's maps) -> the same fields as a map in that order; a map is returned unchanged."""
    if not isinstance(fields, list):
        return fields
    out: dict = {}
    for i, field in enumerate(fields):
        where = f"{path}[{i}]"
        if not isinstance(field, dict) or not isinstance(field.get("name"), str):
            raise validation_error("bad_field", f"{where}: a field in a list is {{\"name\", \"type\", \"desc\"}}",
                                   path=where)
        name = field["name"]
        if name in out:
            raise validation_error("bad_signature", f"{where}: field {name!r} appears twice", path=where, field=name)
        out[name] = {"type": "str", **{key: value for key, value in field.items() if key != "name"}}
    return out


def ordered(canonical):
    """A canonical type with every object's fields as a list (``field_map`` reads it back): the form
    exports use, so that a client which keeps them in maps without order sends them back in order."""
    if not isinstance(canonical, dict) or "literal" in canonical:
        return canonical
    if "object" in canonical:
        fields = [{"name": name, "type": ordered(f["type"]), "desc": f["desc"]} for name, f in canonical["object"].items()]
        return {**canonical, "object": fields}
    return {kind: ordered(inner) for kind, inner in canonical.items()}


def _parse_object(spec: dict, path: str, budget: Budget, depth: int) -> dict:
    fields = field_map(spec["object"], f"{path}.object")
    if not isinstance(fields, dict) or not fields or len(fields) > MAX_OBJECT_FIELDS:
        raise validation_error("bad_type", f"{path}.object: a map of 1 to {MAX_OBJECT_FIELDS} fields", path=path)
    out = {}
    for name, field in fields.items():
        where = f"{path}.object.{name}"
        err = field_name_error(name, where)
        if err:
            raise err
        out[name] = parse_field(field, where, budget, depth + 1)
    result = {"object": out}
    if "name" in spec:
        if not isinstance(spec["name"], str) or not NAME.match(spec["name"]):
            raise validation_error("bad_type", f"{path}.name: object names must match {NAME.pattern}", path=path)
        result["name"] = spec["name"]
    return result


def parse_field(field, path: str, budget: Budget, depth: int = 0) -> dict:
    """``{"type": T, "desc": "..."}`` (or a bare type) -> ``{"type": canonical, "desc": str}``."""
    if isinstance(field, str) or (isinstance(field, dict) and "type" not in field and "desc" not in field):
        field = {"type": field}
    if not isinstance(field, dict) or set(field) - {"type", "desc"}:
        raise validation_error("bad_field", f"{path}: a field is {{\"type\": ..., \"desc\": ...}}", path=path)
    desc = field.get("desc", "")
    if not isinstance(desc, str) or len(desc) > MAX_DESC_CHARS:
        raise validation_error("bad_field", f"{path}.desc: a string of at most {MAX_DESC_CHARS} characters",
                               path=path)
    return {"type": parse(field.get("type", "str"), f"{path}.type", budget, depth), "desc": desc}


# -- values ---------------------------------------------------------------------------


def structure(canonical):
    """The canonical type as ``(kind, detail)``: string spellings parsed back into tuples."""
    if isinstance(canonical, str):
        text = canonical
        if text in PRIMITIVES or text in MEDIA:
            return text, None
        kind, _, inner = text.partition("[")
        inner = inner[:-1]
        if kind == "dict":
            inner = inner[len("str, "):]
        return kind, inner
    if "literal" in canonical:
        return "literal", canonical["literal"]
    if "object" in canonical:
        return "object", canonical["object"]
    (kind, inner), = canonical.items()
    return kind, inner


def allows_missing(canonical) -> bool:
    return structure(canonical)[0] == "optional"


def check(canonical, value, path: str) -> None:
    """Raise a validation error unless ``value`` (decoded JSON) fits the type."""
    kind, detail = structure(canonical)
    if kind == "optional":
        if value is not None:
            check(detail, value, path)
        return
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "object": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "literal": lambda v: any(v == o and type(v) is type(o) for o in detail),
        "history": _is_history,
        "image": _is_image,
    }[kind](value)
    if not ok:
        expected = f"one of {detail}" if kind == "literal" else MEDIA_SHAPES.get(kind, describe(canonical))
        raise validation_error("wrong_type", f"{path}: expected {expected}, got {_kind_of(value)}"[:400],
                               path=path, expected=describe(canonical))
    if kind == "list":
        for i, item in enumerate(value):
            check(detail, item, f"{path}[{i}]")
    elif kind == "dict":
        for key, item in value.items():
            check(detail, item, f"{path}.{key}")
    elif kind == "object":
        check_fields(detail, value, path, "field")


MEDIA_SHAPES = {"history": "history {\"messages\": [{field: value}, ...]} (at most "
                            f"{MAX_HISTORY_MESSAGES} messages)",
                "image": "image {\"url\": \"https://...\" or \"data:image/png;base64,...\"} (at most "
                         f"{MAX_IMAGE_CHARS} characters)"}


def _is_history(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"messages"} and isinstance(value["messages"], list)
            and len(value["messages"]) <= MAX_HISTORY_MESSAGES
            and all(isinstance(m, dict) and all(isinstance(k, str) for k in m) for m in value["messages"]))


def _is_image(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"url"} and isinstance(value["url"], str)
            and len(value["url"]) <= MAX_IMAGE_CHARS and IMAGE_URL.match(value["url"]) is not None)


def check_fields(fields: dict, values: dict, path: str, noun: str) -> None:
    """Every declared field present (unless optional), none unknown, each of its type."""
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise validation_error(f"unknown_{noun}", f"{path}: unknown {noun}(s) {unknown}; expected "
                               f"{sorted(fields)}", path=path, unknown=unknown, expected=sorted(fields))
    missing = [n for n, f in fields.items() if n not in values and not allows_missing(f["type"])]
    if missing:
        raise validation_error(f"missing_{noun}", f"{path}: missing {noun}(s) {missing}", path=path,
                               missing=missing)
    for name, value in values.items():
        check(fields[name]["type"], value, f"{path}.{name}")


def describe(canonical) -> str:
    """A type in DSPy's annotation syntax (``Optional[list[int]]``, ``Literal['a', 1]``; objects by name)."""
    kind, detail = structure(canonical)
    if kind in PRIMITIVES:
        return kind
    if kind in MEDIA:
        return {"history": "dspy.History", "image": "dspy.Image"}[kind]
    if kind == "literal":
        values = (typesyntax.quote(v) if isinstance(v, str) else repr(v) for v in detail)
        return f"Literal[{', '.join(values)}]"
    if kind == "object":
        return canonical.get("name", "object") if isinstance(canonical, dict) else "object"
    inner = describe(detail)
    return {"dict": f"dict[str, {inner}]", "list": f"list[{inner}]"}.get(kind, f"Optional[{inner}]")


def _kind_of(value) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "map"}.get(
        type(value), type(value).__name__)
