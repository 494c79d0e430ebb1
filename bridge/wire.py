"""Python values -> what the frame formats carry: results, chunks and events of user code.

``to_wire(value, binary)`` turns dataclasses into maps, Enum members into
their values, tuples and sets into lists, numpy arrays and scalars into lists
and numbers, Mapping and Sequence types into dicts and lists; anything else a
frame cannot carry (or bytes in a JSON frame, or a map with keys that are not
strings) is a ``serialization`` error that names the type. Plain values pass
through untouched, at the cost of one type check each.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
from typing import Any

from .errors import BridgeError

_PLAIN = frozenset({str, int, float, bool, type(None)})
_FIELDS: dict[type, tuple[str, ...]] = {}  # dataclass -> its field names (fields() costs microseconds a call)


def to_wire(value: Any, binary: bool = True, _depth: int = 0) -> Any:
    """``value`` as the frame formats carry it; raises a ``serialization`` BridgeError if it cannot be.
    ``binary``: the request's format carries bytes (MessagePack does, JSON does not)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is bytes:
        if binary:
            return value
        raise _unencodable(value, "JSON cannot carry (send MessagePack frames, or return text)")
    if _depth > 200:
        raise _unencodable(value, "is nested more than 200 levels deep")
    if kind is list or kind is tuple:
        return [x if type(x) in _PLAIN else to_wire(x, binary, _depth + 1) for x in value]
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise _unencodable(value, "has keys that are not strings")
        return {k: x if type(x) in _PLAIN else to_wire(x, binary, _depth + 1) for k, x in value.items()}
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(kind):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    if names is not None:
        out = {}
        for name in names:
            x = getattr(value, name)
            out[name] = x if type(x) in _PLAIN else to_wire(x, binary, _depth + 1)
        return out
    if isinstance(value, enum.Enum):
        return to_wire(value.value, binary, _depth + 1)
    if kind.__module__ == "numpy" and hasattr(value, "tolist"):  # ndarray and numpy scalars
        return to_wire(value.tolist(), binary, _depth + 1)
    if isinstance(value, (str, int, float)):  # subclasses (IntEnum handled above)
        return (str if isinstance(value, str) else float if isinstance(value, float) else int)(value)
    if isinstance(value, (list, tuple, collections.abc.Set)):
        return [to_wire(x, binary, _depth + 1) for x in value]
    if isinstance(value, collections.abc.Mapping):
        return to_wire(dict(value), binary, _depth + 1)
    raise _unencodable(value, "has no JSON or MessagePack form")


def _unencodable(value: Any, why: str) -> BridgeError:
    kind = type(value).__name__
    return BridgeError("serialization", "unencodable_result",
                       f"a {kind} that {why}", {"type": kind})
