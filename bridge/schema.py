"""Argument schemas: a strict subset of JSON Schema, checked before a handler runs.

Each command registers one schema for its ``args``. The same schema is what
``describe`` returns, so clients see exactly what is enforced. Only the keywords
below are understood; a schema using any other keyword is refused at
registration (a typo such as ``"requried"`` must not silently validate nothing).
"""

from __future__ import annotations

import math
import re
import reprlib

from .errors import RegistrationError, validation_error

ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
KEYWORDS = ANNOTATIONS | {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "maxProperties", "pattern", "anyOf",
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_schema(schema, where: str = "schema") -> None:
    """Raise RegistrationError unless ``schema`` uses only the supported subset."""
    if not isinstance(schema, dict):
        raise RegistrationError(f"{where} must be a map, not {type(schema).__name__}")
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise RegistrationError(f"{where} uses unsupported keywords {sorted(unknown)}")
    types = schema.get("type")
    for name in [types] if isinstance(types, str) else types or []:
        if name not in _TYPES:
            raise RegistrationError(f"{where} names unknown type {name!r}")
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{where}.properties.{name}")
    for key in ("items",):
        if key in schema:
            check_schema(schema[key], f"{where}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        check_schema(schema["additionalProperties"], f"{where}.additionalProperties")
    for i, sub in enumerate(schema.get("anyOf", [])):
        check_schema(sub, f"{where}.anyOf[{i}]")
    if "pattern" in schema:
        re.compile(schema["pattern"])
    missing = set(schema.get("required", [])) - set(schema.get("properties", {}))
    if missing:
        raise RegistrationError(f"{where} requires undeclared properties {sorted(missing)}")


def _type_name(value) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__


# Values quoted in error messages come from the client: quote them short and shallow
# (a plain repr of a 1,000-level list raises RecursionError, of a 60 MB string costs 60 MB).
_quote = reprlib.Repr()
_quote.maxlevel, _quote.maxstring, _quote.maxother, _quote.maxlong = 3, 60, 60, 40
_quote.maxlist = _quote.maxtuple = _quote.maxdict = _quote.maxset = 5


def _equal(a, b) -> bool:
    """JSON equality, as enum and const mean it: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        return False
    return a == b


def _fail(path: str, message: str, reason: str):
    return validation_error("invalid_args", f"{path}: {message}", path=path, reason=reason)


def _error(schema: dict, value, path: str):
    """The first violation as a BridgeError, or None."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[n](value) for n in names):
            return _fail(path, f"expected {' or '.join(names)}, got {_type_name(value)}", "type")
    if "const" in schema and not _equal(value, schema["const"]):
        return _fail(path, f"must be {schema['const']!r}", "const")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        return _fail(path, f"must be one of {schema['enum']}, got {_quote.repr(value)}"[:300], "enum")
    if "anyOf" in schema:
        errors = [_error(sub, value, path) for sub in schema["anyOf"]]
        if all(errors):
            # Report the branch that got furthest into the value.
            return max(errors, key=lambda e: len(e.details["path"]))
    if isinstance(value, str):
        return _string_error(schema, value, path)
    if _TYPES["number"](value):
        if isinstance(value, float) and math.isnan(value) and ("minimum" in schema or "maximum" in schema):
            return _fail(path, "must be a number within its bounds, got NaN", "minimum" if "minimum" in schema else "maximum")
        if "minimum" in schema and value < schema["minimum"]:
            return _fail(path, f"must be >= {schema['minimum']}, got {value}", "minimum")
        if "maximum" in schema and value > schema["maximum"]:
            return _fail(path, f"must be <= {schema['maximum']}, got {value}", "maximum")
    if isinstance(value, list):
        return _array_error(schema, value, path)
    if isinstance(value, dict):
        return _object_error(schema, value, path)
    return None


def _string_error(schema: dict, value: str, path: str):
    if "minLength" in schema and len(value) < schema["minLength"]:
        return _fail(path, f"must have at least {schema['minLength']} characters", "minLength")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return _fail(path, f"must have at most {schema['maxLength']} characters, got {len(value)}", "maxLength")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return _fail(path, f"does not match the pattern {schema['pattern']}", "pattern")
    return None


def _array_error(schema: dict, value: list, path: str):
    if "minItems" in schema and len(value) < schema["minItems"]:
        return _fail(path, f"must have at least {schema['minItems']} items", "minItems")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return _fail(path, f"must have at most {schema['maxItems']} items, got {len(value)}", "maxItems")
    if "items" in schema:
        for i, item in enumerate(value):
            err = _error(schema["items"], item, f"{path}[{i}]")
            if err:
                return err
    return None


def _object_error(schema: dict, value: dict, path: str):
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        return _fail(path, f"must have at most {schema['maxProperties']} entries, got {len(value)}", "maxProperties")
    for name in schema.get("required", []):
        if name not in value:
            return _fail(f"{path}.{name}", "is required", "required")
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub_path = f"{path}.{key}"
        if key in props:
            err = _error(props[key], item, sub_path)
        elif extra is False:
            known = ", ".join(sorted(props)) or "none"
            return _fail(sub_path, f"is not a known argument (known: {known})", "additionalProperties")
        elif isinstance(extra, dict):
            err = _error(extra, item, sub_path)
        else:
            err = None
        if err:
            return err
    return None


def validate(schema: dict, args: dict, path: str = "args") -> dict:
    """Return ``args`` with top-level defaults filled in, or raise a validation BridgeError."""
    err = _error(schema, args, path)
    if err:
        raise err
    defaults = {
        name: sub["default"]
        for name, sub in schema.get("properties", {}).items()
        if "default" in sub and name not in args
    }
    return {**defaults, **args} if defaults else args


def compile_validator(schema: dict):
    """The function that checks one command's args: ``check(args) -> args with defaults``.

    Called once at registration. The two schemas most commands use get a
    shortcut (control commands run on the reading thread, where every
    microsecond is latency for every client): "no args" only has to see an
    empty map, "any map" nothing at all (the envelope already checked that
    args is a map). Every other schema goes through ``validate``.
    """
    keys = set(schema) - ANNOTATIONS
    if keys == {"type"} and schema["type"] == "object":
        return _accept
    if keys == {"type", "properties", "additionalProperties"} and not schema["properties"] \
            and schema["additionalProperties"] is False:
        return lambda args: args if not args else validate(schema, args)
    return lambda args: validate(schema, args)


def _accept(args: dict) -> dict:
    return args
