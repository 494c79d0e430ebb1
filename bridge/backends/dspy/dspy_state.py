"""DSPy's own saved state, the JSON ``module.save("x.json")`` writes, loaded into an existing program.

    {"<predictor>": {"traces": [], "train": [], "demos": [{field: value, ...}, ...],
                     "signature": {"instructions": "...",
                                   "fields": [{"prefix": "Question:", "description": "${question}"}, ...]},
                     "lm": null, "fields": {}},
     ...one entry per predictor, named as DSPy names them: "predict", "hop1.predict"...
     "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}}}

A bare ``dspy.Predict`` (a Predict program) saves its one predictor's entry at
the top level, beside ``metadata``.

DSPy's ``load_state`` takes a state of another structure silently: it zips a
predictor's fields by position and sets any key as an attribute. Here the state
must fit the program it goes into, and a mismatch is a ``validation`` error
that names what differs: the predictors, a predictor's number of fields, a
field's name (DSPy writes an undescribed field's description as ``${name}``,
and its prefix from its name) or description, a demo's field or value.

What is loaded is what an optimiser learns: each predictor's instructions and
demos. Not loaded: an LM saved with a predictor (a client never chooses the
worker's endpoints; the program runs on its scope's LM, and the result lists
it under ``ignored``), prefixes (DSPy 3.4 no longer uses them), traces and
train. The program is replaced whole by a copy holding the new state, as an
optimisation replaces it: a call already running keeps the old one.
"""

from __future__ import annotations

import re
import time

from dspy.signatures.signature import infer_prefix

from ...errors import validation_error
from . import spec
from .programs import teach
from .state import Program

PREDICTOR_KEYS = {"traces", "train", "demos", "signature", "lm", "fields"}  # Predict.dump_state in DSPy 3.4
PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")  # DSPy's description of a field declared without one
ROOT = "args.dspy_state"


def _refuse(code: str, message: str, path: str, **details):
    return validation_error(code, f"{path}: {message}", path=path, **details)


def load_into(dspy, program: Program, state) -> tuple[Program, dict]:
    """A new program: ``program`` with the instructions and demos of ``state``; and a report of what was read."""
    if not isinstance(state, dict):
        raise _refuse("bad_dspy_state", "the JSON that DSPy's module.save(\"x.json\") writes", ROOT)
    saved_by = _versions(state.get("metadata"))
    flat = "signature" in state or "demos" in state  # a bare dspy.Predict saves its own state at the top
    saved = {"self": {k: v for k, v in state.items() if k != "metadata"}} if flat else \
        {name: entry for name, entry in state.items() if name != "metadata"}
    names = [name for name, _ in program.predictors()]
    missing, unexpected = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
    if missing or unexpected:
        raise _refuse("program_mismatch", f"the state is of another program: it has predictors {sorted(saved)}, "
                      f"program {program.program_id!r} ({program.module_name}) has {names}" +
                      (f"; missing: {missing}" if missing else "") +
                      (f"; not in the program: {unexpected}" if unexpected else ""),
                      ROOT, missing=missing, unexpected=unexpected)
    module = program.module.deepcopy()
    ignored, demos = [], 0
    for name, predictor in module.named_predictors():
        where = ROOT if flat else f"{ROOT}.{name}"
        entry = saved[name]
        _check_entry(entry, where)
        if entry.get("lm") is not None:
            ignored.append(f"{name}.lm")
        instructions = _check_signature(predictor.signature, entry["signature"], f"{where}.signature")
        demos += teach(dspy, program, name, predictor, instructions, entry["demos"], where, "bad_dspy_state")
    record = {"imported": "dspy_state", "dspy": saved_by.get("dspy"), "at": round(time.time(), 3)}
    loaded = program.derive(program.program_id, module, [*program.optimizations, record][-100:])
    return loaded, {"predictors": len(names), "demos": demos, "ignored": ignored, "saved_by": saved_by}


def _versions(metadata) -> dict:
    if metadata is None:
        return {}
    versions = metadata.get("dependency_versions") if isinstance(metadata, dict) else None
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise _refuse("bad_dspy_state", "metadata is {\"dependency_versions\": {name: version}}",
                      f"{ROOT}.metadata")
    return {str(k)[:64]: v[:64] for k, v in list(versions.items())[:16]}


def _check_entry(entry, where: str) -> None:
    if not isinstance(entry, dict):
        raise _refuse("bad_dspy_state", "a predictor's state is a map (Predict.dump_state)", where)
    unknown = sorted(set(entry) - PREDICTOR_KEYS)
    if unknown:
        raise _refuse("bad_dspy_state", f"unknown key(s) {unknown}; a predictor's state has {sorted(PREDICTOR_KEYS)}",
                      where, unknown=unknown)
    for key in ("signature", "demos"):
        if key not in entry:
            raise _refuse("bad_dspy_state", f"no {key!r}", where)
    for key in ("traces", "train"):
        if not isinstance(entry.get(key, []), list):
            raise _refuse("bad_dspy_state", f"{key} must be a list", f"{where}.{key}")
    if entry.get("fields"):
        raise _refuse("bad_dspy_state", "per-field decision settings (DSPy's Score, Choice...) are not supported: "
                      "no field type of this worker uses them", f"{where}.fields")
    if not (entry.get("lm") is None or isinstance(entry["lm"], dict)):
        raise _refuse("bad_dspy_state", "lm must be null or a map", f"{where}.lm")


def _check_signature(signature, saved, where: str) -> str:
    """The saved signature state against the predictor's own; returns the instructions to load."""
    if not isinstance(saved, dict) or set(saved) - {"instructions", "fields"} or "fields" not in saved:
        raise _refuse("bad_dspy_state", "signature is {\"instructions\", \"fields\"}", where)
    instructions = saved.get("instructions", signature.instructions)
    if not isinstance(instructions, str) or len(instructions) > spec.MAX_INSTRUCTIONS_CHARS:
        raise _refuse("bad_dspy_state", f"instructions must be a string of at most {spec.MAX_INSTRUCTIONS_CHARS} "
                      "characters", f"{where}.instructions")
    ours = list(signature.fields)
    fields = saved["fields"]
    if not isinstance(fields, list) or len(fields) != len(ours):
        count = len(fields) if isinstance(fields, list) else "no list of"
        raise _refuse("program_mismatch", f"the state has {count} fields, the predictor has {len(ours)}: {ours}",
                      f"{where}.fields", expected=ours)
    for i, (name, field) in enumerate(zip(ours, fields)):
        at = f"{where}.fields[{i}]"
        if not isinstance(field, dict) or not all(isinstance(field.get(k), str) for k in ("prefix", "description")):
            raise _refuse("bad_dspy_state", "a field's state is {\"prefix\": str, \"description\": str}", at)
        said = PLACEHOLDER.match(field["description"])
        named = said.group(1) if said else _named_by_prefix(field["prefix"], ours, name)
        if named is not None and named != name:
            raise _refuse("program_mismatch", f"field {i + 1} is {named!r} in the state, {name!r} in the predictor "
                          f"(its fields: {ours})", at, field=name, found=named)
        desc = signature.fields[name].json_schema_extra.get("desc", "")
        if field["description"] != desc:
            show = lambda d, n=name: "" if d == f"${{{n}}}" else d  # noqa: E731 - DSPy's "no description"
            raise _refuse("program_mismatch", f"field {name!r} is described {show(field['description'])!r}"[:300] +
                          f" in the state, {show(desc)!r}"[:300] + " in the predictor", at, field=name)
    return instructions


def _named_by_prefix(prefix: str, ours: list, name: str) -> str | None:
    """The field a prefix names when it is another field's default prefix (COPRO rewrites the last one freely)."""
    if prefix == f"{infer_prefix(name)}:":
        return name
    return next((other for other in ours if prefix == f"{infer_prefix(other)}:"), None)
