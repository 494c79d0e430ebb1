"""Signatures and field types from data: what is accepted, its canonical form, and value checks.

Pure Python, no DSPy: these modules run before the import gate.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.backends.dspy import fieldtypes, metrics, spec
from bridge.errors import BridgeError


def parse_type(t):
    return fieldtypes.parse(t, "t", fieldtypes.Budget(spec.MAX_TYPE_NODES))


def refused(fn, *args) -> BridgeError:
    with pytest.raises(BridgeError) as info:
        fn(*args)
    assert info.value.category == "validation", info.value
    return info.value


def test_plain_string_signature_gives_str_fields():
    s = spec.parse_signature("question, context -> answer")
    assert s["inputs"] == {"question": {"type": "str", "desc": ""}, "context": {"type": "str", "desc": ""}}
    assert list(s["outputs"]) == ["answer"]
    assert spec.summary(s) == "question: str, context: str -> answer: str"


@pytest.mark.parametrize("text", [
    "q: this -> a",                # DSPy's parser would import the module 'this'
    "q -> a: os.system",
    "question answer",
    "-> a",
    "q ->",
    "q, -> a",
    "q -> a -> b",
    "_private -> a",
    "q -> a, a",
    "class -> a",                  # a Python keyword
    "demos -> a",                  # dspy.Predict takes demos= for itself
    "q -> model_output",           # pydantic's namespace
    "q" * 3000 + " -> a",
])
def test_string_signatures_outside_dspys_syntax_and_the_whitelist_are_refused(text):
    refused(spec.parse_signature, text)


def test_map_signature_canonical_form():
    s = spec.parse_signature({
        "name": "Triage",
        "instructions": "Sort the ticket.",
        "inputs": {"ticket": {"type": "str", "desc": "the text"}, "tags": "List[str]"},
        "outputs": {
            "priority": {"type": {"literal": ["low", "high", 3, True]}},
            "owner": {"type": {"object": {"name": "str", "team": {"type": "Optional[str]", "desc": "t"}},
                               "name": "Owner"}},
            "scores": {"type": {"dict": "float"}},
            "maybe": {"type": {"optional": {"list": "int"}}},
        },
    })
    assert s["name"] == "Triage" and s["instructions"] == "Sort the ticket."
    assert s["inputs"]["tags"] == {"type": "list[str]", "desc": ""}
    out = s["outputs"]
    assert out["priority"]["type"] == {"literal": ["low", "high", 3, True]}
    assert out["owner"]["type"] == {"name": "Owner", "object": {
        "name": {"type": "str", "desc": ""}, "team": {"type": "optional[str]", "desc": "t"}}}
    assert out["scores"]["type"] == "dict[str, float]"
    assert out["maybe"]["type"] == "optional[list[int]]"
    assert spec.parse_signature(s) == s  # canonical is a fixed point


def test_fields_as_lists_keep_their_order_and_read_as_the_map_form():
    listed = spec.parse_signature({
        "name": "Triage",
        "inputs": [{"name": "ticket", "type": "str", "desc": "the text"}, {"name": "customer"}],
        "outputs": [{"name": "urgent", "type": "bool"},
                    {"name": "item", "type": {"object": [{"name": "sku", "type": "str"}, {"name": "qty", "type": "int"}],
                                              "name": "Item"}},
                    {"name": "category", "type": {"literal": ["bug", "other"]}}],
    })
    assert list(listed["inputs"]) == ["ticket", "customer"]  # as listed, not sorted
    assert listed["inputs"]["customer"] == {"type": "str", "desc": ""}
    assert list(listed["outputs"]) == ["urgent", "item", "category"]
    assert list(listed["outputs"]["item"]["type"]["object"]) == ["sku", "qty"]
    ordered = spec.ordered(listed)
    assert [f["name"] for f in ordered["outputs"]] == ["urgent", "item", "category"]
    assert [f["name"] for f in ordered["outputs"][1]["type"]["object"]] == ["sku", "qty"]
    # Read back (and through a client that sorts every map's keys) it is the same spec, in the same order.
    import json
    again = spec.parse_signature(json.loads(json.dumps(ordered, sort_keys=True)))
    assert again == listed and list(again["outputs"]) == list(listed["outputs"])
    assert list(again["outputs"]["item"]["type"]["object"]) == ["sku", "qty"]


@pytest.mark.parametrize("bad", [
    [{"name": "q"}, {"name": "q"}], [{"type": "str"}], ["q"], [], [{"name": "q", "type": "str", "extra": 1}],
])
def test_malformed_field_lists_are_refused(bad):
    refused(spec.parse_signature, {"inputs": bad, "outputs": {"a": "str"}})


@pytest.mark.parametrize("bad", [
    "string", "list", "list[]", "dict[int, str]", "tuple[int]", "os.path", "list[str", "int]",
    "__import__('os')", {"literal": []}, {"literal": [1.5]}, {"literal": ["a; b"]}, {"literal": [None]},
    {"literal": ["x", "x"]}, {"object": {}}, {"object": {"1bad": "str"}}, {"list": "str", "dict": "str"},
    {"type": "str"}, {"object": {"a": "str"}, "name": "bad name"}, 5, None, [],
])
def test_types_outside_the_whitelist_are_refused(bad):
    refused(parse_type, bad)


def test_type_depth_and_size_are_bounded():
    deep = "str"
    for _ in range(fieldtypes.MAX_DEPTH + 1):
        deep = f"list[{deep}]"
    assert refused(parse_type, deep).code == "type_too_deep"
    wide = {f"f{i}": {"type": {"object": {f"g{j}": "str" for j in range(30)}}} for i in range(10)}
    err = refused(spec.parse_signature, {"inputs": {"x": "str"}, "outputs": wide})
    assert err.code == "signature_too_large"
    many = ", ".join(f"f{i}" for i in range(spec.MAX_FIELDS))
    assert refused(spec.parse_signature, f"{many} -> out").code == "signature_too_large"


def test_inputs_are_checked_missing_unknown_and_mistyped():
    s = spec.parse_signature({"inputs": {"q": "str", "n": "int", "opt": "optional[int]",
                                         "item": {"type": {"object": {"a": "bool"}}}},
                              "outputs": {"a": "str"}})
    spec.check_inputs(s, {"q": "x", "n": 1, "item": {"a": True}})  # the optional input may be left out
    assert refused(spec.check_inputs, s, {"n": 1, "item": {"a": True}}).code == "missing_input"
    assert refused(spec.check_inputs, s, {"q": "x", "n": 1, "item": {"a": True}, "z": 1}).code == "unknown_input"
    err = refused(spec.check_inputs, s, {"q": "x", "n": True, "item": {"a": True}})
    assert err.code == "wrong_type" and err.details["path"] == "args.inputs.n"
    err = refused(spec.check_inputs, s, {"q": "x", "n": 1, "item": {"a": 1}})
    assert err.details["path"] == "args.inputs.item.a"
    assert refused(spec.check_inputs, s, {"q": "x", "n": 1, "item": {}}).code == "missing_field"


@pytest.mark.parametrize("t, good, bad", [
    ("int", [0, -5, 2**40], [1.0, True, "1", None]),
    ("float", [1, 1.5], [True, "1.5"]),
    ("bool", [True, False], [0, "true"]),
    ("list[int]", [[], [1, 2]], [[1, "2"], {"a": 1}]),
    ("dict[str, list[str]]", [{}, {"a": ["x"]}], [{"a": "x"}, ["x"]]),
    ("optional[str]", [None, "x"], [1]),
    ({"literal": ["a", 1, True]}, ["a", 1, True], ["b", 2, False, "1"]),
])
def test_value_checks(t, good, bad):
    canonical = parse_type(t)
    for value in good:
        fieldtypes.check(canonical, value, "v")
    for value in bad:
        refused(fieldtypes.check, canonical, value, "v")


# -- properties: every type tree has a canonical fixed point, and values built for it pass ------------

primitive = st.sampled_from(["str", "int", "float", "bool"])
literal = st.lists(st.one_of(st.text("abc", min_size=1, max_size=5), st.integers(-5, 5), st.booleans()),
                   min_size=1, max_size=4, unique_by=lambda v: (type(v), v)).map(lambda v: {"literal": v})


def _compound(inner):
    return st.one_of(
        inner.map(lambda t: {"list": t}),
        inner.map(lambda t: {"dict": t}),
        inner.map(lambda t: {"optional": t}),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=3).map(
            lambda fields: {"object": {k: {"type": v} for k, v in fields.items()}}),
    )


type_trees = st.recursive(st.one_of(primitive, literal), _compound, max_leaves=8)


def value_for(canonical, draw):
    kind, detail = fieldtypes.structure(canonical)
    simple = {"str": st.text(max_size=5), "int": st.integers(-10, 10), "float": st.floats(-1, 1),
              "bool": st.booleans()}
    if kind in simple:
        return draw(simple[kind])
    if kind == "literal":
        return draw(st.sampled_from(detail))
    if kind == "optional":
        return None if draw(st.booleans()) else value_for(detail, draw)
    if kind == "list":
        return [value_for(detail, draw) for _ in range(draw(st.integers(0, 2)))]
    if kind == "dict":
        return {f"k{i}": value_for(detail, draw) for i in range(draw(st.integers(0, 2)))}
    return {name: value_for(field["type"], draw) for name, field in detail.items()}


@settings(max_examples=150, deadline=None)
@given(type_trees, st.data())
def test_canonical_form_is_a_fixed_point_and_built_values_pass(tree, data):
    canonical = parse_type(tree)
    assert parse_type(canonical) == canonical
    assert parse_type(fieldtypes.ordered(canonical)) == canonical  # the list form of exports reads back
    fieldtypes.check(canonical, value_for(canonical, data.draw), "v")


def test_metrics_normalise_and_score_per_field():
    exact, _, _ = metrics.METRICS["exact_match"]
    assert exact("The Paris!", "paris") == 1.0 and exact(3, 3) == 1.0 and exact(3, "3") == 0.0
    contains, _, _ = metrics.METRICS["contains"]
    assert contains("Paris", "It is the city of Paris.") == 1.0
    f1, threshold, _ = metrics.METRICS["f1"]
    assert 0 < f1("the capital is paris", "paris is it") < 1 and threshold == 0.5
    assert metrics.METRICS["equals"][0](1, 1.0) == 0.0
