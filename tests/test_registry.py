"""The registry and argument schemas fail loudly at registration and precisely at validation."""

from __future__ import annotations

import pytest

from bridge.errors import BridgeError, RegistrationError, categories
from bridge.registry import ANY_ARGS, Command, Registry
from bridge.schema import check_schema, validate


def handler(ctx, args):
    return args


def test_decorator_returns_the_function_unchanged():
    registry = Registry()
    assert registry.command("x")(handler) is handler
    assert registry.get("x").handler is handler


@pytest.mark.parametrize("name", ["", "Upper", "has space", "1starts_with_digit", "x" * 65, None])
def test_bad_names_are_refused(name):
    with pytest.raises(RegistrationError):
        Registry().add(Command(name, handler, ANY_ARGS))


def test_duplicates_are_refused_and_name_the_owner():
    registry = Registry()
    registry.command("x", backend="one")(handler)
    with pytest.raises(RegistrationError, match="'one'"):
        registry.command("x", backend="two")(handler)


@pytest.mark.parametrize("schema", [
    {"type": "object", "requried": ["a"]},                      # typo of a keyword
    {"type": "object", "properties": {"a": {"type": "strng"}}},  # unknown type
    {"type": "object", "required": ["a"]},                      # required but undeclared
    {"type": "array"},                                          # args must be an object
    "not a map",
])
def test_bad_schemas_are_refused(schema):
    with pytest.raises(RegistrationError):
        Registry().add(Command("x", handler, schema))


def test_non_callable_handler_is_refused():
    with pytest.raises(RegistrationError):
        Registry().add(Command("x", "not callable", ANY_ARGS))


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
        "n": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "kind": {"enum": ["a", "b"]},
        "either": {"anyOf": [{"type": "string"}, {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}]},
        "nested": {"type": "object", "properties": {"deep": {"type": "integer"}}, "additionalProperties": False},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def test_valid_args_get_defaults():
    check_schema(SCHEMA)
    assert validate(SCHEMA, {"name": "abc"}) == {"name": "abc", "n": 3}
    assert validate(SCHEMA, {"name": "abc", "n": 0}) == {"name": "abc", "n": 0}


@pytest.mark.parametrize("args,path,reason", [
    ({}, "args.name", "required"),
    ({"name": 5}, "args.name", "type"),
    ({"name": ""}, "args.name", "minLength"),
    ({"name": "abcdef"}, "args.name", "maxLength"),
    ({"name": "ABC"}, "args.name", "pattern"),
    ({"name": "a", "n": True}, "args.n", "type"),          # a bool is not an integer
    ({"name": "a", "n": 1.0}, "args.n", "type"),           # nor is a float
    ({"name": "a", "n": 11}, "args.n", "maximum"),
    ({"name": "a", "n": -1}, "args.n", "minimum"),
    ({"name": "a", "ratio": "1"}, "args.ratio", "type"),
    ({"name": "a", "ratio": False}, "args.ratio", "type"),
    ({"name": "a", "tags": ["x", 1]}, "args.tags[1]", "type"),
    ({"name": "a", "tags": ["x", "y", "z"]}, "args.tags", "maxItems"),
    ({"name": "a", "kind": "c"}, "args.kind", "enum"),
    ({"name": "a", "either": {"x": "no"}}, "args.either.x", "type"),
    ({"name": "a", "nested": {"deep": 1, "other": 2}}, "args.nested.other", "additionalProperties"),
    ({"name": "a", "extra": 1}, "args.extra", "additionalProperties"),
])
def test_violations_name_the_path_and_the_rule(args, path, reason):
    with pytest.raises(BridgeError) as info:
        validate(SCHEMA, args)
    err = info.value
    assert (err.category, err.code) == ("validation", "invalid_args")
    assert err.details == {"path": path, "reason": reason}
    assert err.message.startswith(path + ":")


def test_classify_uses_backend_classifiers_then_internal():
    registry = Registry()
    registry.classifier(lambda exc: BridgeError("execution", "boom", str(exc)) if isinstance(exc, KeyError) else None)
    registry.classifier(lambda exc: 1 / 0)  # a broken classifier is skipped
    assert registry.classify(KeyError("k")).category == "execution"
    internal = registry.classify(ValueError("v"))
    assert (internal.category, internal.details["exception"]) == ("internal", "ValueError")
    own = BridgeError("timeout", "t", "m")
    assert registry.classify(own) is own


def test_unknown_category_is_a_programming_error():
    with pytest.raises(RegistrationError):
        BridgeError("no_such_category", "c", "m")


def test_every_category_has_a_wire_row():
    for name in categories():
        wire = BridgeError(name, "c", "m").to_wire()
        assert set(wire) == {"category", "code", "message", "severity", "recovery", "retryable", "details"}
