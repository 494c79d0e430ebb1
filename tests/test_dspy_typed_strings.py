"""DSPy's typed string signatures ("question -> answer: int"), read as data through the map form's whitelist.

The parser never evaluates or imports anything (``typesyntax``); these tests
pin what it accepts, that it reads exactly what the map form reads (hypothesis
round trips over every whitelisted type tree, in every spelling DSPy users
write), that no string makes it raise anything but a ``validation`` error, and
that the DSPy signature built from it formats the same prompts as DSPy's own
``dspy.Signature(text)`` (in process, on strings the test itself generates;
``test_dspy_parity`` compares the requests of a worker against a loopback server).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.backends.dspy import fieldtypes, spec, typesyntax
from bridge.errors import BridgeError
from tests.test_dspy_spec import literal, primitive, refused


def fields_of(text: str) -> dict:
    s = spec.parse_signature(text)
    return {side: {name: f["type"] for name, f in s[side].items()} for side in ("inputs", "outputs")}


@pytest.mark.parametrize("text, inputs, outputs", [
    ("question -> answer: int", {"question": "str"}, {"answer": "int"}),
    ("question: str, context: list[str] -> answer: float", {"question": "str", "context": "list[str]"},
     {"answer": "float"}),
    ("q -> tags: List[str], scores: Dict[str, int], ok: bool", {"q": "str"},
     {"tags": "list[str]", "scores": "dict[str, int]", "ok": "bool"}),
    ("q -> level: Literal['low', \"high\", 3, -1, True]", {"q": "str"},
     {"level": {"literal": ["low", "high", 3, -1, True]}}),
    ("q -> a: Optional[int], b: int | None, c: None | str, d: Union[float, None]", {"q": "str"},
     {"a": "optional[int]", "b": "optional[int]", "c": "optional[str]", "d": "optional[float]"}),
    ("q -> a: list[Literal['x', 'y']]", {"q": "str"}, {"a": {"list": {"literal": ["x", "y"]}}}),
    ("picture: dspy.Image, past: dspy.History -> caption", {"picture": "image", "past": "history"},
     {"caption": "str"}),
    ("  q:str->a:dict[str,list[int]]  ", {"q": "str"}, {"a": "dict[str, list[int]]"}),
    ("q -> a: Literal['->', 'x, y: z']", {"q": "str"}, {"a": {"literal": ["->", "x, y: z"]}}),  # DSPy: 2 arrows
    ("q -> a: Literal['it\\'s', \"say \\\"hi\\\"\", 'tab\\there']", {"q": "str"},
     {"a": {"literal": ["it's", 'say "hi"', "tab\there"]}}),
])
def test_typed_string_signatures_read_as_dspy_reads_them(text, inputs, outputs):
    assert fields_of(text) == {"inputs": inputs, "outputs": outputs}


@pytest.mark.parametrize("text, path", [
    ("q: this -> a", "args.signature.inputs.q.type"),            # DSPy's parser would import 'this'
    ("q -> a: os.system", "args.signature.outputs.a.type"),
    ("q -> a: __import__('os')", "args.signature.outputs.a.type"),
    ("q: os.system('touch x') -> a", "args.signature.inputs.q.type"),
    ("q -> a: list[eval('1')]", "args.signature.outputs.a.type"),
    ("q -> a: int | str", "args.signature.outputs.a.type"),      # only T | None unions
    ("q -> a: None", "args.signature.outputs.a.type"),
    ("q -> a: tuple[int]", "args.signature.outputs.a.type"),
    ("q -> a: Literal[1.5]", "args.signature.outputs.a.type.literal[0]"),
    ("q -> a: Literal[None]", "args.signature.outputs.a.type"),
    ("q -> a: Literal['\\x41']", "args.signature.outputs.a.type"),
    ("q -> a: dict[int, str]", "args.signature.outputs.a.type"),
    ("q -> a: list[dspy.Image]", "args.signature.outputs.a.type.list"),
    ("q -> a: dspy.Image", "args.signature.outputs.a"),          # media are inputs only
    ("q -> a: List[int", "args.signature.outputs.a.type"),
    ("q -> a: typing.List[int]", "args.signature.outputs.a.type"),
])
def test_a_type_that_is_code_or_unknown_is_a_validation_error_naming_the_field(text, path):
    err = refused(spec.parse_signature, text)
    assert err.details["path"] == path and path.split(".")[3].split("[")[0] in err.message, err


@pytest.mark.parametrize("text", [
    "question answer", "-> a", "q ->", "q, -> a", "q -> a -> b", "q -> a, a", "q -> q", "_private -> a",
    "class -> a", "demos -> a", "q -> model_output", "q -> a: int = 3", "q: -> a", "dspy.x -> a",
    "q" * 3000 + " -> a", "", "->",
])
def test_malformed_string_signatures_are_refused(text):
    refused(spec.parse_signature, text)


# -- properties ---------------------------------------------------------------------------------------

def _spellings(draw, tree) -> str:
    """One of the ways a DSPy user may write ``tree`` (a map-form type without objects) as an annotation."""
    kind, inner = next(iter(tree.items())) if isinstance(tree, dict) else (tree, None)
    if inner is None:
        return tree
    if kind == "literal":
        values = [_quoted(v, draw(st.sampled_from(['"', "'"]))) if isinstance(v, str) else repr(v) for v in inner]
        return "Literal[" + draw(st.sampled_from([", ", ","])).join(values) + "]"
    sub = _spellings(draw, inner)
    if kind == "list":
        return f"{draw(st.sampled_from(['list', 'List']))}[{sub}]"
    if kind == "dict":
        return f"{draw(st.sampled_from(['dict', 'Dict']))}[str, {sub}]"
    return draw(st.sampled_from([f"Optional[{sub}]", f"{sub} | None", f"None | {sub}", f"Union[{sub}, None]",
                                 f"optional[{sub}]"]))


def _quoted(value: str, mark: str) -> str:
    """A Python string literal, escaping backslashes and both quotes (as some users do)."""
    return mark + value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + mark


def _no_objects(inner):
    return st.one_of(inner.map(lambda t: {"list": t}), inner.map(lambda t: {"dict": t}),
                     inner.map(lambda t: {"optional": t}))


def _literals(low: int, arrows: bool = True):
    texts = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=6).filter(
        lambda s: "; " not in s and (arrows or "->" not in s))
    return st.lists(st.one_of(texts, st.integers(low, 99), st.booleans()), min_size=1, max_size=4,
                    unique_by=lambda v: (type(v), v)).map(lambda v: {"literal": v})


flat_trees = st.recursive(st.one_of(primitive, literal, _literals(-99)), _no_objects, max_leaves=5)
# DSPy's parser reads no negative number in a Literal, and counts a "->" inside a quoted value as the arrow.
dspy_trees = st.recursive(st.one_of(primitive, _literals(0, arrows=False)), _no_objects, max_leaves=4)
names = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in spec.RESERVED and not n.startswith("model_") and n not in ("if", "in", "is", "or", "as")),
    min_size=2, max_size=6, unique=True)


@settings(max_examples=200, deadline=None)
@given(names, st.lists(flat_trees, min_size=6, max_size=6), st.data())
def test_a_typed_string_reads_exactly_as_the_same_map(field_names, trees, data):
    cut = data.draw(st.integers(1, len(field_names) - 1))
    sides = {"inputs": field_names[:cut], "outputs": field_names[cut:]}
    as_map = {side: {n: trees[i] for i, n in enumerate(ns)} for side, ns in sides.items()}
    written = " -> ".join(", ".join(f"{n}: {_spellings(data.draw, t)}" for n, t in as_map[side].items())
                          for side in ("inputs", "outputs"))
    from_string = spec.parse_signature(written)
    assert from_string == spec.parse_signature(as_map)
    # ...and the canonical spec's summary is itself a string signature that reads back the same.
    assert spec.parse_signature(spec.summary(from_string)) == from_string


GRAMMAR = st.sampled_from(["q", "a", "int", "str", "list", "dict", "Dict", "Optional", "Literal", "Union", "None",
                           "True", "dspy.Image", "history", "os.system", "[", "]", ",", ":", "|", "->", "=", "(",
                           ")", "'x'", '"y', "\\", "-1", "2.5", " ", "'it\\'s'", "__import__", "\x00", "é"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(GRAMMAR, max_size=40).map("".join),
                 st.lists(GRAMMAR, max_size=40).map(" ".join)))
def test_any_string_is_a_signature_or_a_validation_error(text):
    try:
        parsed = spec.parse_signature(text)
    except BridgeError as exc:
        assert exc.category == "validation" and exc.message and exc.details.get("path", "").startswith(
            "args.signature")
        return
    assert parsed["inputs"] and parsed["outputs"]
    for side in ("inputs", "outputs"):
        for name, field in parsed[side].items():
            assert fieldtypes.parse(field["type"], name, fieldtypes.Budget(spec.MAX_TYPE_NODES)) == field["type"]


@given(st.text(max_size=30))
def test_quoted_literal_strings_read_back(value):
    assert typesyntax.unquote(typesyntax.quote(value), "p") == value


# -- the DSPy signature from a typed string is DSPy's own ----------------------------------------------

dspy = pytest.importorskip("dspy")


def _dspy_spelling(draw, tree) -> str:
    """As ``_spellings``, in what DSPy's own parser reads the same way.

    DSPy knows no lowercase ``optional``, cannot read a negative number in a
    Literal, and keeps ``None | T`` as ``Union[None, T]`` (its prompt then
    lists ``null`` first); the worker reads that spelling as ``Optional[T]``.
    """
    kind, inner = next(iter(tree.items())) if isinstance(tree, dict) else (tree, None)
    if kind == "optional":
        sub = _dspy_spelling(draw, inner)
        return draw(st.sampled_from([f"Optional[{sub}]", f"{sub} | None", f"Union[{sub}, None]"]))
    if kind == "list":
        return f"{draw(st.sampled_from(['list', 'List']))}[{_dspy_spelling(draw, inner)}]"
    if kind == "dict":
        return f"{draw(st.sampled_from(['dict', 'Dict']))}[str, {_dspy_spelling(draw, inner)}]"
    return _spellings(draw, tree)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(dspy_trees, min_size=1, max_size=3), st.sampled_from(["chat", "json", "xml"]), st.data())
def test_the_signature_formats_the_prompts_of_dspy_signature_of_the_same_string(trees, adapter, data):
    from bridge.backends.dspy import build

    outputs = ", ".join(f"out{i}: {_dspy_spelling(data.draw, t)}" for i, t in enumerate(trees))
    text = f"question, context: list[str] -> {outputs}"
    mine = build.signature(dspy, spec.parse_signature(text))
    theirs = dspy.Signature(text)  # safe here: the test wrote the string, from whitelisted names only
    made = {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}[adapter]()
    inputs = {"question": "Why?", "context": ["a", "b"]}
    assert made.format(mine, [], inputs) == made.format(theirs, [], inputs)
