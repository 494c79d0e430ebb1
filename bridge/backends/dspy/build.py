"""Canonical specs -> DSPy objects: annotations, signatures, modules (imported after the gate)."""

from __future__ import annotations

from typing import Literal, Optional

import dspy
import pydantic

from ...errors import validation_error
from . import agents, fieldtypes, spec
from .catalog import MODULES, PIPELINE, WRAPPERS

REASONING = "reasoning"


def annotation(canonical, owner: str = "Object"):
    """The Python type for a canonical field type (pydantic models for objects)."""
    kind, detail = fieldtypes.structure(canonical)
    if kind in fieldtypes.PRIMITIVES:
        return {"str": str, "int": int, "float": float, "bool": bool}[kind]
    if kind in fieldtypes.MEDIA:
        return {"history": dspy.History, "image": dspy.Image}[kind]
    if kind == "literal":
        return Literal[tuple(detail)]
    if kind == "object":
        name = canonical.get("name") or owner[:1].upper() + owner[1:]
        fields = {}
        for field_name, field in detail.items():
            if hasattr(pydantic.BaseModel, field_name):
                raise validation_error("reserved_field_name", f"object field {field_name!r} of {name} shadows a "
                                       "pydantic attribute; rename it", field=field_name)
            sub = annotation(field["type"], f"{name}_{field_name}")
            default = None if fieldtypes.allows_missing(field["type"]) else ...
            fields[field_name] = (sub, pydantic.Field(default, description=field["desc"] or None))
        # pydantic's default (extra keys ignored), as a user's own model in plain DSPy: ``extra="forbid"``
        # would add ``additionalProperties: false`` to the prompt and fail answers that plain DSPy accepts.
        return pydantic.create_model(name, **fields)
    inner = annotation(detail, owner)
    if kind == "list":
        return list[inner]
    if kind == "dict":
        return dict[str, inner]
    return Optional[inner]  # noqa: UP007 - a runtime typing object, not an annotation


def signature(dspy, spec: dict):
    """A ``dspy.Signature`` class from a canonical spec."""
    fields = {}
    for side, make in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
        for name, field in spec[side].items():
            if hasattr(dspy.Signature, name):
                raise validation_error("reserved_field_name", f"field {name!r} shadows an attribute of "
                                       "dspy.Signature; rename it", field=name)
            kwargs = {"desc": field["desc"]} if field["desc"] else {}
            fields[name] = (annotation(field["type"], name), make(**kwargs))
    return dspy.make_signature(fields, spec["instructions"] or None, signature_name=spec["name"])


# Fields ReAct adds to its predictors (next_tool_args: any JSON object, type None).
REACT_FIELDS = {"trajectory": "str", "next_thought": "str", "next_tool_name": "str", "next_tool_args": None}


def module(dspy, module_name: str, spec: dict, options: dict | None = None):
    """A fresh, unoptimised DSPy module for the spec (``options``: tools, reward... as ``programs.options_of``)."""
    options = options or {}
    if module_name not in MODULES or module_name == PIPELINE:  # a pipeline is built from its steps (pipeline/)
        raise validation_error("unsupported_module", f"module {module_name!r} cannot be built from data; "
                               f"supported: {', '.join(MODULES)}", module=module_name)
    if module_name in WRAPPERS:
        return agents.wrapper(module_name, module(dspy, options["base_module"], spec, options), options)
    reserved = {REASONING, *REACT_FIELDS} if module_name == "ReAct" else {REASONING}
    clash = sorted(reserved & (set(spec["outputs"]) | set(spec["inputs"])))
    if module_name != "Predict" and clash:
        raise validation_error("reserved_field_name", f"{module_name} adds its own {clash} field(s); rename "
                               "yours or use Predict", field=clash[0])
    sig = signature(dspy, spec)
    if module_name == "ReAct":
        return agents.react(sig, options["tools"], options["max_iters"])
    return dspy.ChainOfThought(sig) if module_name == "ChainOfThought" else dspy.Predict(sig)


def base_of(module_name: str, options: dict | None) -> str:
    """The module that makes the predictions: BestOfN's and Refine's base_module, else the module itself."""
    return (options or {}).get("base_module", "Predict") if module_name in WRAPPERS else module_name


def output_fields(module_name: str, spec: dict, options: dict | None = None) -> dict:
    """Every output a prediction carries ('reasoning' of ChainOfThought and ReAct included), as ``{name: field}``."""
    if base_of(module_name, options) in ("ChainOfThought", "ReAct"):
        return {REASONING: {"type": "str", "desc": ""}, **spec["outputs"]}
    return dict(spec["outputs"])


def demo_fields(module_name: str, spec: dict, options: dict | None = None) -> dict:
    """Every field a demo of this module's predictors may carry, as ``{name: {"type", "desc"}}``."""
    fields = {**spec["inputs"], **output_fields(module_name, spec, options)}
    if base_of(module_name, options) == "ReAct":
        fields.update({name: {"type": kind, "desc": ""} for name, kind in REACT_FIELDS.items()})
    return fields


def python_inputs(program, inputs: dict) -> dict:
    """Checked JSON inputs -> the values DSPy expects (pydantic models where the type is an object).

    Each input's converter (a pydantic TypeAdapter, or None for a plain value)
    is made once per program and kept in ``program.converters``.
    """
    out = {}
    converters = program.converters
    for name, value in inputs.items():
        converter = converters.get(name, False)
        if converter is False:
            ann = program.signature.input_fields[name].annotation
            converter = converters[name] = None if ann in (str, int, float, bool) else pydantic.TypeAdapter(ann)
        out[name] = value if converter is None else converter.validate_python(value)
    return out


def adapter(dspy, name: str, lm):
    """The DSPy adapter a program declared (``lm`` extracts the fields for two_step)."""
    if name == "json":
        return dspy.JSONAdapter()
    if name == "xml":
        return dspy.XMLAdapter()
    if name == "two_step":
        return dspy.TwoStepAdapter(extraction_model=lm)
    return dspy.ChatAdapter()


def examples(dspy, program, items: list, path: str) -> list:
    """Checked ``[{"inputs", "outputs"}]`` -> ``dspy.Example``s with their inputs marked (raises ``validation``)."""
    found = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        program.check_inputs(item["inputs"], f"{where}.inputs")
        if not item["outputs"]:
            raise validation_error("unlabelled_example", f"{where}.outputs: label at least one output",
                                   path=f"{where}.outputs")
        program.check_labels(item["outputs"], f"{where}.outputs")  # reasoning may be labelled
        values = program.python_inputs(item["inputs"])
        found.append(dspy.Example(**values, **item["outputs"]).with_inputs(*values))
    return found
