"""Signatures from data: DSPy's string form and the typed map form, checked and normalised.

    "question, context -> answer"                      every field a str
    {"name": "QA", "instructions": "...",
     "inputs":  {"question": {"type": "str", "desc": "..."}},
     "outputs": {"answer": {"type": "int"}}}
    {..., "inputs": [{"name": "question", "type": "str", "desc": "..."}], ...}   fields in order

Maps of fields keep their order in Python and in JSON text, but not through every
client's maps (Elixir's are sorted by key): the list form keeps the order, which
DSPy's prompts follow. ``ordered`` writes a spec in that form (exports use it).

    "question: str, context: list[str] -> answer: Literal['yes', 'no'], n: int | None"
                                                       DSPy's typed string form

DSPy's own string parser imports modules named in type annotations (``"q:
this -> a"`` imports ``this``), so no client string ever reaches it: a string
is tokenized here (``typesyntax``), turned into the map form, and read exactly
as a map, through the whitelist in ``fieldtypes``. DSPy's string form has no
descriptions; the map form has. The result is the canonical spec that
``get_program`` shows and ``export_program`` writes. No DSPy import here.
"""

from __future__ import annotations

from ...errors import validation_error
from . import fieldtypes, typesyntax
from .fieldtypes import Budget

MAX_FIELDS = 32
MAX_TYPE_NODES = 256
MAX_INSTRUCTIONS_CHARS = 20_000
MAX_STRING_CHARS = 2_000
DEFAULT_NAME = "ProgramSignature"
# Keyword arguments dspy.Predict takes for itself (an input of that name would never
# reach the LM), and the flag BootstrapFewShot puts on its demos.
RESERVED = frozenset({"signature", "demos", "config", "lm", "prediction", "new_signature", "augmented"})

LIMITS = {
    "max_fields": MAX_FIELDS,
    "max_type_nodes": MAX_TYPE_NODES,
    "max_type_depth": fieldtypes.MAX_DEPTH,
    "max_instructions_chars": MAX_INSTRUCTIONS_CHARS,
    "max_signature_string_chars": MAX_STRING_CHARS,
    "max_field_desc_chars": fieldtypes.MAX_DESC_CHARS,
    "max_literal_values": fieldtypes.MAX_LITERALS,
    "max_object_fields": fieldtypes.MAX_OBJECT_FIELDS,
    "max_history_messages": fieldtypes.MAX_HISTORY_MESSAGES,
    "max_image_chars": fieldtypes.MAX_IMAGE_CHARS,
}


def parse_signature(signature, instructions: str | None = None) -> dict:
    """A client's signature (string or map) -> the canonical spec; raises ``validation``."""
    if isinstance(signature, str):
        spec = _from_string(signature)
    elif isinstance(signature, dict):
        spec = _from_map(signature)
    else:
        raise validation_error("bad_signature", "args.signature: a string 'a, b: int -> c' or a map",
                               path="args.signature")
    if instructions is not None:
        spec["instructions"] = _instructions(instructions, "args.instructions")
    return spec


def _from_string(text: str) -> dict:
    """DSPy's string form, types included, read as data and then checked exactly as the map form."""
    where = "args.signature"
    if len(text) > MAX_STRING_CHARS:
        raise validation_error("bad_signature", f"{where}: at most {MAX_STRING_CHARS} characters", path=where)
    tokens = typesyntax.tokenize(text)
    arrows = [i for i, t in enumerate(tokens) if t.kind == "punct" and t.text == "->"]
    if len(arrows) != 1:
        raise _bad_string(f"exactly one '->' is needed, found {len(arrows)}")
    doc: dict = {"inputs": {}, "outputs": {}}
    seen: set[str] = set()
    for side, part in (("inputs", tokens[:arrows[0]]), ("outputs", tokens[arrows[0] + 1:])):
        for field in _top_level_split(part):
            name, type_tokens = _field_of(field, side)
            if name in seen:
                raise validation_error("bad_signature", f"{where}: field {name!r} appears twice", path=where,
                                       field=name)
            seen.add(name)
            path = f"{where}.{side}.{name}.type"
            doc[side][name] = "str" if type_tokens is None else \
                typesyntax.parse(type_tokens, path, fieldtypes.MAX_DEPTH)
    return _from_map(doc)  # names, reserved words, limits: checked once, for both forms


def _bad_string(why: str):
    return validation_error("bad_signature", f"args.signature: {why}; a string signature is DSPy's "
                            "'question: str, context: list[str] -> answer: int' (a field without a type is a str)",
                            path="args.signature")


def _top_level_split(tokens: list) -> list[list]:
    """The fields of one side: its tokens split at commas outside brackets."""
    fields: list[list] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "punct" and token.text in ("[", "]"):
            depth += 1 if token.text == "[" else -1
        if token.kind == "punct" and token.text == "," and depth == 0:
            fields.append([])
        else:
            fields[-1].append(token)
    return fields


def _field_of(tokens: list, side: str):
    """``name`` or ``name: type`` -> (name, the type's tokens or None)."""
    if not tokens:
        raise _bad_string(f"an empty field among the {side}")
    name = tokens[0]
    if name.kind != "name":
        raise _bad_string(f"{name.text[:100]!r} is not a field name")
    if len(tokens) == 1:
        return name.text, None
    if any(t.kind == "punct" and t.text == "=" for t in tokens):
        raise _bad_string(f"field {name.text!r} has a default; DSPy's string signatures carry no defaults or "
                          "descriptions (use the map form for a desc)")
    if tokens[1].kind != "punct" or tokens[1].text != ":" or len(tokens) == 2:
        raise _bad_string(f"field {name.text!r} is followed by {tokens[1].text[:100]!r}; write 'name: type'")
    return name.text, tokens[2:]


def _from_map(doc: dict) -> dict:
    unknown = set(doc) - {"name", "instructions", "inputs", "outputs"}
    if unknown:
        raise validation_error("bad_signature", f"args.signature: unknown key(s) {sorted(unknown)}; a signature "
                               "has name, instructions, inputs and outputs", path="args.signature")
    name = doc.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not fieldtypes.NAME.match(name):
        raise validation_error("bad_signature", f"args.signature.name: must match {fieldtypes.NAME.pattern}",
                               path="args.signature.name")
    budget = Budget(MAX_TYPE_NODES)
    spec = {"name": name, "instructions": _instructions(doc.get("instructions", ""), "args.signature.instructions")}
    names = []
    for side in ("inputs", "outputs"):
        where = f"args.signature.{side}"
        fields = fieldtypes.field_map(doc.get(side), where)
        if not isinstance(fields, dict) or not fields:
            raise validation_error("bad_signature", f"{where}: a non-empty map of field name -> "
                                   "{\"type\", \"desc\"}, or a list of {\"name\", \"type\", \"desc\"}",
                                   path=where)
        spec[side] = {}
        for field_name, field in fields.items():
            names.append(field_name)
            err = fieldtypes.field_name_error(field_name, f"{where}.{field_name}")
            if err:
                raise err
            spec[side][field_name] = fieldtypes.parse_field(field, f"{where}.{field_name}", budget)
            if side == "outputs" and spec[side][field_name]["type"] in fieldtypes.MEDIA:
                raise validation_error("bad_type", f"{where}.{field_name}: history and image are input types",
                                       path=f"{where}.{field_name}")
    _check_names(spec, names)
    return spec


def ordered(spec: dict) -> dict:
    """The canonical spec with its fields (and every object's) as lists, in order; ``parse_signature``
    reads it back to the same spec."""
    side = lambda fields: [{"name": name, "type": fieldtypes.ordered(f["type"]), "desc": f["desc"]}  # noqa: E731
                           for name, f in fields.items()]
    return {**spec, "inputs": side(spec["inputs"]), "outputs": side(spec["outputs"])}


def _instructions(text, path: str) -> str:
    if not isinstance(text, str) or len(text) > MAX_INSTRUCTIONS_CHARS:
        raise validation_error("bad_signature", f"{path}: a string of at most {MAX_INSTRUCTIONS_CHARS} characters",
                               path=path)
    return text


def _check_names(spec: dict, names: list[str]) -> None:
    if len(names) > MAX_FIELDS:
        raise validation_error("signature_too_large", f"args.signature: at most {MAX_FIELDS} fields, got "
                               f"{len(names)}", path="args.signature", max_fields=MAX_FIELDS)
    seen = set()
    for name in names:
        if name in seen:
            raise validation_error("bad_signature", f"args.signature: field {name!r} appears twice",
                                   path="args.signature", field=name)
        seen.add(name)
        err = fieldtypes.field_name_error(name, f"args.signature.{name}")
        if err:
            raise err
        if name in RESERVED or name.startswith("model_"):
            raise validation_error("reserved_field_name", f"args.signature: {name!r} is reserved by DSPy; "
                                   "rename the field", path="args.signature", field=name)


def check_inputs(spec: dict, inputs: dict, path: str = "args.inputs") -> None:
    """Missing, unknown or mistyped inputs are validation errors (DSPy itself would only log a warning)."""
    fieldtypes.check_fields(spec["inputs"], inputs, path, "input")


def check_outputs(fields: dict, outputs: dict, path: str) -> None:
    """Labelled outputs (trainsets): unknown or mistyped ones are refused; some may be absent."""
    unknown = sorted(set(outputs) - set(fields))
    if unknown:
        raise validation_error("unknown_output", f"{path}: unknown output(s) {unknown}; expected "
                               f"{sorted(fields)}", path=path, unknown=unknown)
    for name, value in outputs.items():
        fieldtypes.check(fields[name]["type"], value, f"{path}.{name}")


def summary(spec: dict) -> str:
    """``question: str, context: str -> answer: int``, for listings."""
    side = lambda fields: ", ".join(f"{n}: {fieldtypes.describe(f['type'])}" for n, f in fields.items())  # noqa: E731
    return f"{side(spec['inputs'])} -> {side(spec['outputs'])}"
