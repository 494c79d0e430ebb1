"""A function's parameters -> the argument schema, the converters and where the context goes.

Shared by ``@command`` functions and ``@program`` modules (their ``__init__``
and ``forward``): every parameter but the context must have a JSON form
(``bridge.sdk.hints``), a default that is a JSON scalar becomes the schema's
default, and a Google-style ``Args:`` section of the docstring describes each
argument (an ``Annotated[T, "..."]`` description wins over it). Anything
without a JSON form raises ``RegistrationError`` naming ``where``.
"""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Union, get_args, get_origin, get_type_hints

from ..context import Context
from ..errors import RegistrationError
from .hints import converter_of, schema_of, with_default


@dataclass
class Parameters:
    schema: dict
    converters: dict[str, Callable]
    context: str | None  # the name of the Context parameter, if any


def parameters(fn: Callable, where: str, skip: int = 0, doc: str | None = None) -> Parameters:
    """The parameters of ``fn`` (the first ``skip`` left out: ``self``), described as a schema;
    ``doc``: the docstring whose ``Args:`` describe them (default: ``fn``'s own)."""
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:  # a hint naming something undefined
        raise RegistrationError(f"{where}: its type hints cannot be resolved: {exc}") from exc
    notes = arg_docs(inspect.getdoc(fn) or "" if doc is None else doc)
    props: dict[str, dict] = {}
    required: list[str] = []
    converters: dict[str, Callable] = {}
    context = None
    extra: dict | bool = False
    for p in list(inspect.signature(fn).parameters.values())[skip:]:
        hint = hints.get(p.name, Any)
        if is_context(hint):
            context = p.name
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            raise RegistrationError(f"{where}: parameter {p.name!r} is positional-only; arguments arrive by name")
        if p.kind is p.VAR_KEYWORD:
            extra = schema_of(hint, f"{where}(**{p.name})")
            continue
        schema = schema_of(hint, f"{where}({p.name})")
        if p.name in notes and not _described(hint):  # Annotated[T, "..."] first, then Args:, then T's own
            schema = {**schema, "description": notes[p.name]}
        if p.default is p.empty:
            required.append(p.name)
        else:
            schema = with_default(schema, p.default)
        props[p.name] = schema
        if (convert := converter_of(hint)) is not None:
            converters[p.name] = convert
    schema = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = required
    return Parameters(schema, converters, context)


def is_context(hint: Any) -> bool:
    """``Context``, or ``Context | None`` (a default of None lets the code also run outside a worker)."""
    if hint is Context:
        return True
    return get_origin(hint) in (Union, types.UnionType) and set(get_args(hint)) == {Context, type(None)}


def _described(hint: Any) -> bool:
    return get_origin(hint) is Annotated and any(isinstance(note, str) for note in get_args(hint)[1:])


def convert(params: Parameters, args: dict) -> dict:
    """Checked JSON arguments -> the keyword arguments the hints promise (dataclasses, Enum members...)."""
    converters = params.converters
    if not converters:
        return dict(args)
    return {k: converters[k](v) if k in converters else v for k, v in args.items()}


_SECTION = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ARGS_SECTION = re.compile(r"^(Args|Arguments|Parameters):[ \t]*\n(?:[ \t]+\S.*\n?|[ \t]*\n)*", re.M)
_ARG = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")


def description(doc: str) -> str:
    """A docstring (cleaned, as ``inspect.getdoc`` gives it) without its ``Args:`` section: that went
    into the schema."""
    return _ARGS_SECTION.sub("", doc).strip()


def arg_docs(doc: str) -> dict[str, str]:
    """Argument descriptions from a Google-style ``Args:`` section of a docstring."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if _SECTION.match(line.strip()):
            indent = None
            current = None
            for body in lines[i + 1:]:
                if not body.strip():
                    continue
                depth = len(body) - len(body.lstrip())
                if indent is None:
                    indent = depth
                if depth < indent or depth == 0:
                    break
                m = _ARG.match(body.strip())
                if depth == indent and m:
                    current = m.group(1).lstrip("*")
                    out[current] = m.group(2).strip()
                elif current is not None:
                    out[current] = f"{out[current]} {body.strip()}".strip()
            break
    return out
