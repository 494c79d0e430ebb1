"""Type hints -> argument schemas, and JSON values -> the Python values the hints promise.

``schema_of(hint)`` maps a hint to the subset of JSON Schema that
``bridge.schema`` enforces; ``converter_of(hint)`` returns the function that
turns a checked JSON value into what the hint names (a dataclass instance, an
Enum member, a tuple), or None where the JSON value already is that (str, int,
float, bool, lists and dicts of those, Literal, TypedDict). A hint with no JSON
form raises ``RegistrationError`` at start-up, naming the function and the
parameter, never at the first call.

``to_wire(value)`` (``bridge.wire``, re-exported here) is the other direction,
for results, chunks and events.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import BridgeError, RegistrationError
from ..schema import _error as schema_error
from ..wire import to_wire  # noqa: F401 -- re-exported: hints in, wire values out

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", None: "null"}
_LISTS = (list, collections.abc.Sequence, collections.abc.MutableSequence, typing.List, typing.Sequence)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping, typing.Dict, typing.Mapping)
_UNIONS = (Union, types.UnionType)


def schema_of(hint: Any, where: str, _seen: tuple = ()) -> dict:
    """The argument schema of ``hint``; ``where`` names it in errors (``module.fn(param)``)."""
    if hint is Any or hint is object:
        return {}
    if hint is None or (isinstance(hint, type) and hint in _SCALARS):
        return {"type": _SCALARS[hint]}
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        schema = schema_of(args[0], where, _seen)
        for note in args[1:]:  # a string describes; Schema(minimum=1) adds schema keywords
            if isinstance(note, str):
                schema = {**schema, "description": note}
            elif isinstance(note, Schema):
                schema = {**schema, **note.keywords}
        return schema
    if hint in _LISTS or origin in _LISTS:
        return {"type": "array", **({"items": schema_of(args[0], where, _seen)} if args else {})}
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_of(args[0], where, _seen)}
        raise RegistrationError(f"{where}: {_name(hint)} has no JSON form; use tuple[T, ...], list[T] or a dataclass")
    if hint in _DICTS or origin in _DICTS:
        if args and args[0] is not str:
            raise RegistrationError(f"{where}: {_name(hint)}: JSON maps have string keys; use dict[str, ...]")
        return {"type": "object", **({"additionalProperties": schema_of(args[1], where, _seen)} if args else {})}
    if origin in _UNIONS:
        return _union([schema_of(a, where, _seen) for a in args])
    if origin is Literal:
        bad = [v for v in args if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise RegistrationError(f"{where}: Literal values must be JSON scalars, not {bad!r}")
        return {"enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if is_typeddict(hint) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        if hint in _seen:
            raise RegistrationError(f"{where}: {_name(hint)} refers to itself; recursive types have no schema here")
        return _record(hint, where, _seen + (hint,))
    raise RegistrationError(
        f"{where}: {_name(hint)} has no JSON form; use str, int, float, bool, list[...], dict[str, ...], "
        "Optional, Literal, an Enum, a TypedDict or a dataclass")


class Schema:
    """Schema keywords for an ``Annotated`` hint: ``Annotated[int, Schema(minimum=1, maximum=10)]``
    (any keyword of the subset ``bridge.schema`` enforces; checked at start-up). Hashable, as
    ``Optional[Annotated[...]]`` needs its parts to be."""

    __slots__ = ("_items",)

    def __init__(self, **keywords: Any) -> None:
        self._items = tuple(sorted((k, _frozen(v)) for k, v in keywords.items()))

    @property
    def keywords(self) -> dict:
        return {k: _thawed(v) for k, v in self._items}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and other._items == self._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Schema({', '.join(f'{k}={v!r}' for k, v in self.keywords.items())})"


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return ("__map__", tuple(sorted((k, _frozen(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("__list__", tuple(_frozen(v) for v in value))
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__map__":
        return {k: _thawed(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__list__":
        return [_thawed(v) for v in value[1]]
    return value


def is_typeddict(hint: Any) -> bool:
    """typing's TypedDict and typing_extensions' (which ``typing.is_typeddict`` does not know before 3.12)."""
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__") \
        and hasattr(hint, "__annotations__")


def _union(schemas: list[dict]) -> dict:
    """``{"type": [...]}`` when every member is a bare type, else ``anyOf``."""
    if all(set(s) == {"type"} and isinstance(s["type"], str) for s in schemas):
        return {"type": [s["type"] for s in schemas]}
    return {"anyOf": schemas}


def _fields(hint) -> list[tuple[str, Any, bool, Any]]:
    """(name, hint, required, default or MISSING) of a TypedDict's keys or a dataclass's init fields."""
    hints = get_type_hints(hint, include_extras=True)
    if is_typeddict(hint):
        return [(k, h, k in hint.__required_keys__, dataclasses.MISSING) for k, h in hints.items()]
    out = []
    for f in dataclasses.fields(hint):
        if f.init:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append((f.name, hints.get(f.name, Any), required, f.default))
    return out


def _record(hint, where: str, seen: tuple) -> dict:
    props, required = {}, []
    for name, field_hint, needed, default in _fields(hint):
        props[name] = with_default(schema_of(field_hint, f"{where}.{name}", seen), default)
        if needed:
            required.append(name)
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    doc = (hint.__doc__ or "").strip()
    # A dataclass without a docstring gets a generated one ("Point(x: int, y: int)"): not a description.
    if doc and not doc.startswith(f"{hint.__name__}("):
        schema["description"] = doc.split("\n\n")[0]
    return schema


def with_default(schema: dict, default: Any) -> dict:
    """Add a default to a schema when it is a JSON scalar (defaults are filled in before the call;
    a list or dict default would be one object shared by every call, so it stays Python's)."""
    if default is None or isinstance(default, (str, bool, int)) or (
            isinstance(default, float) and math.isfinite(default)):
        return {**schema, "default": default}
    if isinstance(default, enum.Enum) and isinstance(default.value, (str, int, bool)):
        return {**schema, "default": default.value}
    return schema


# -- JSON values -> Python values --------------------------------------------------------

def converter_of(hint: Any):
    """A function making a checked JSON value into what ``hint`` promises, or None (nothing to do)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return converter_of(args[0])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if origin is tuple or hint is tuple:
        item = converter_of(args[0]) if args else None
        return tuple if item is None else (lambda v: tuple(item(x) for x in v))
    if origin in _LISTS and args:
        item = converter_of(args[0])
        return None if item is None else (lambda v: [item(x) for x in v])
    if origin in _DICTS and args:
        value = converter_of(args[1])
        return None if value is None else (lambda v: {k: value(x) for k, x in v.items()})
    if origin in _UNIONS:
        branches = [(schema_of(a, "union"), converter_of(a)) for a in args]
        if not any(c for _, c in branches):
            return None
        return lambda v: _convert_union(branches, v)
    if is_typeddict(hint) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        convs = {name: c for name, h, _, _ in _fields(hint) if (c := converter_of(h)) is not None}
        if is_typeddict(hint):
            return None if not convs else (lambda v: {k: convs[k](x) if k in convs else x for k, x in v.items()})
        return lambda v: hint(**{k: convs[k](x) if k in convs else x for k, x in v.items()})
    return None


def _convert_union(branches, value):
    for schema, conv in branches:
        if schema_error(schema, value, "") is None:
            return value if conv is None else conv(value)
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)
