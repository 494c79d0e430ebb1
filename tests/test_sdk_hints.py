"""Type hints -> schemas and conversions (bridge.sdk.hints), as properties over generated hints and values.

For any hint built from the supported pieces: the derived schema is a JSON
Schema (jsonschema agrees it is one); the worker's checker, jsonschema, and
pydantic's strict reading of the hint itself (an independent oracle of what
the hint admits) agree on every value; and a value that passes converts to the
hinted Python value and back to the same JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Literal, Optional, Union

import jsonschema
import orjson
import pytest
from hypothesis import given, settings, strategies as st
from typing_extensions import TypedDict as ExtTypedDict

pydantic = pytest.importorskip("pydantic")  # a DSPy dependency: here only the oracle

from bridge.errors import BridgeError, RegistrationError
from bridge.schema import _error as schema_error, check_schema
from bridge.sdk import Context, Schema, command
from bridge.sdk.parameters import parameters
from bridge.sdk.hints import converter_of, schema_of, to_wire


class Shade(enum.Enum):
    DARK = "dark"
    LIGHT = 2


@pydantic.with_config(pydantic.ConfigDict(extra="forbid"))  # as the derived schema: no unknown keys
class Pair(ExtTypedDict):  # typing_extensions' TypedDict, as pydantic users write them
    left: int
    right: Optional[str]


@pydantic.with_config(pydantic.ConfigDict(extra="forbid"))
class Span(ExtTypedDict, total=False):
    start: int
    end: int


@pydantic.with_config(pydantic.ConfigDict(extra="forbid"))
@dataclasses.dataclass
class Named:
    name: str
    shade: Shade
    scores: list[float]


SCALAR_HINTS = st.sampled_from([str, int, float, bool, type(None), Any, Shade, Pair, Named, Span,
                                Literal["a", "b", 3], Literal[True, None]])
HINTS = st.recursive(
    SCALAR_HINTS,
    lambda inner: st.one_of(
        inner.map(lambda h: list[h]),
        inner.map(lambda h: dict[str, h]),
        inner.map(lambda h: Optional[h]),
        inner.map(lambda h: tuple[h, ...]),
        st.tuples(inner, inner).map(lambda hs: Union[hs[0], hs[1]]),
    ),
    max_leaves=6,
)
# JSON values; integral floats are left out, where Python's int/float and JSON Schema's "integer" part ways.
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
KEYS = st.sampled_from(["name", "shade", "scores", "left", "right", "start", "end", "a", "b"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), FLOATS, st.sampled_from(["a", "b", "dark", "x"]),
                    st.sampled_from([2, 3]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(KEYS, inner, max_size=4)), max_leaves=10)


def valid_value(schema: dict):
    """A strategy of values that may well pass ``schema`` (random JSON alone rarely does)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([valid_value(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([valid_value({**schema, "type": k}) for k in kind])
    if kind == "object" and "properties" in schema:
        return st.fixed_dictionaries({k: valid_value(s) for k, s in schema["properties"].items()})
    if kind == "object":
        return st.dictionaries(KEYS, valid_value(schema.get("additionalProperties", {})), max_size=3)
    if kind == "array":
        return st.lists(valid_value(schema.get("items", {})), max_size=3)
    ints = st.integers(-(2**63), 2**63 - 1)  # what a frame can carry
    return {"string": st.text(max_size=5), "integer": ints, "number": st.one_of(ints, FLOATS),
            "boolean": st.booleans(), "null": st.none(), None: JSON}[kind]


@settings(max_examples=300, deadline=None)
@given(HINTS, st.data())
def test_derived_schemas_mean_what_json_schema_says_and_conversions_round_trip(hint, data):
    schema = schema_of(hint, "property")
    check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    oracle = pydantic.TypeAdapter(hint)
    for value in (data.draw(JSON), data.draw(valid_value(schema))):
        ours = schema_error(schema, value, "args") is None
        assert ours == validator.is_valid(value), (schema, value)
        assert ours == _admits(oracle, value), (hint, schema, value)
        if ours:
            convert = converter_of(hint)
            python = value if convert is None else convert(value)
            assert _same_json(to_wire(python), value), (hint, value, python)


def _admits(oracle, value) -> bool:
    try:
        oracle.validate_json(orjson.dumps(value), strict=True)
    except pydantic.ValidationError:
        return False
    return True


def _same_json(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_conversions_build_what_the_hints_name():
    named = converter_of(list[Named])([{"name": "n", "shade": 2, "scores": [0.5]}])
    assert named == [Named("n", Shade.LIGHT, [0.5])]
    assert converter_of(Optional[tuple[Shade, ...]])(["dark"]) == (Shade.DARK,)
    assert converter_of(Union[int, Named])(3) == 3
    assert converter_of(dict[str, int]) is None and converter_of(list[Pair]) is None  # nothing to do


@pytest.mark.parametrize("value,message", [
    (object(), "a object that has no JSON or MessagePack form"),
    ({1: "a"}, "has keys that are not strings"),
    ([[[]]] * 1, None),
])
def test_to_wire_refuses_what_no_frame_can_carry(value, message):
    if message is None:
        assert to_wire(value) == value
        return
    with pytest.raises(BridgeError) as info:
        to_wire(value)
    assert info.value.category == "serialization" and message in info.value.message


def test_to_wire_converts_numpy_sets_and_deep_nesting():
    np = pytest.importorskip("numpy")
    assert to_wire({"v": np.arange(3, dtype=np.float32), "n": np.int64(4), "s": {1}}) == {"v": [0.0, 1.0, 2.0],
                                                                                       "n": 4, "s": [1]}
    deep: list = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(BridgeError, match="nested more than 200 levels"):
        to_wire(deep)
    with pytest.raises(BridgeError, match="JSON cannot carry"):
        to_wire(b"x", binary=False)


def test_parameters_of_a_function():
    @command(cpu_bound=True)
    def f(ctx: Context, a: int, b: str = "x", *, c: Optional[list[Named]] = None, **rest: float) -> None:
        """Do f.

        Args:
            a: the a.
            b: the b,
                on two lines.
        """

    params = parameters(f, "f")
    assert params.context == "ctx" and set(params.converters) == {"c"}
    assert params.schema["required"] == ["a"] and params.schema["additionalProperties"] == {"type": "number"}
    assert params.schema["properties"]["b"] == {"type": "string", "default": "x", "description": "the b, on two lines."}
    assert f.__portbridge_command__ == {"name": "f", "cpu_bound": True}


@pytest.mark.parametrize("name", ["", "1abc", "a.b", "x" * 65, 3])
def test_command_names_must_be_identifiers(name):
    with pytest.raises(RegistrationError):
        command(name=name)(lambda: None)


def test_schema_keywords_are_hashable_and_checked_at_registration():
    from typing import Annotated

    hint = Optional[Annotated[int, "n", Schema(minimum=1, enum=[1, 2])]]
    schema = schema_of(hint, "x")
    assert schema == {"anyOf": [{"type": "integer", "description": "n", "enum": [1, 2], "minimum": 1},
                                {"type": "null"}]}
    with pytest.raises(RegistrationError, match="unsupported keywords"):
        check_schema(schema_of(Annotated[int, Schema(minimun=1)], "x"))


def test_the_sdk_context_is_the_workers_own_and_the_package_only_re_exports():
    import ast
    import pathlib

    import bridge.context
    import bridge.sdk

    assert bridge.sdk.Context is bridge.context.Context
    tree = ast.parse(pathlib.Path(bridge.sdk.__file__).read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__
    assert all(name in vars(bridge.sdk) for name in bridge.sdk.__all__)

