"""Programs as data: create from a spec, export to a JSON document, import it back.

The export document is the whole program, never a pickle:

    {"format": "portbridge.dspy.program", "version": 1,
     "program_id": "...", "module": "ChainOfThought", "options": {"adapter": "chat"},
     "signature": {canonical spec, fields as lists (spec.ordered): their order survives any client},
     "state": {"predictors": {"predict": {"instructions": "...", "demos": [{...}, ...]}}},
     "optimizations": [...], "exported_by": {"portbridge": "0.1.0", "dspy": "3.4.1"}}

DSPy's own ``dump_state`` keeps neither the module class nor field names or
types, and its ``load_state`` accepts a mismatched structure silently; so the
definition travels with the learned state and ``load`` rebuilds the program
from the definition, then checks every predictor name, demo field and demo
value against it before anything is kept. LM settings are never exported.
"""

from __future__ import annotations

import time

from ... import __version__
from ...errors import BridgeError, validation_error
from . import build, fieldtypes, pipeline, spec
from . import options as module_options
from .catalog import MAX_DEMOS, MODULES, PIPELINE
from .inrequest import json_fields
from .retrieval import RetrieveThenGenerate
from .state import Program

FORMAT = "portbridge.dspy.program"
VERSION = 1
DOC_KEYS = {"format", "version", "program_id", "module", "options", "signature", "state", "optimizations",
            "exported_by"}
AUGMENTED = "augmented"  # BootstrapFewShot's mark on the demos it generated


PIPELINE_KEYS = ("steps", "outputs")


def options_of(args: dict, module_name: str, signature_spec: dict, path: str = "args") -> dict:
    """What ``create_program`` declares beside module and signature, checked: a pipeline's steps, or a module's."""
    if module_name == PIPELINE:
        return pipeline.declare(args, signature_spec, path).options
    given = [key for key in PIPELINE_KEYS if args.get(key) is not None]
    if given:
        raise validation_error("option_not_applicable", f"{path}: {given} apply to a Pipeline program only "
                               f"(module: \"{PIPELINE}\")", path=path, options=given)
    return module_options.options_of(args, module_name, signature_spec, path)


def check_options(doc_options, path: str, module_name: str, signature_spec: dict) -> dict:
    if module_name == PIPELINE:
        return pipeline.check_document(doc_options, signature_spec, path)
    return module_options.check_options(doc_options, path, module_name, signature_spec)


def create(dspy, program_id: str, module_name: str, signature_spec: dict, options: dict | None = None) -> Program:
    options = options or options_of({}, module_name, signature_spec)
    if module_name == PIPELINE:
        return Program(program_id, module_name, signature_spec, pipeline.create(dspy, signature_spec, options),
                       options=options)
    module = build.module(dspy, module_name, signature_spec, options)
    if options.get("retrieve"):
        module = RetrieveThenGenerate(module, options["retrieve"])
    return Program(program_id, module_name, signature_spec, module, options=options)


def demo_to_json(demo) -> dict:
    return json_fields(demo if hasattr(demo, "items") else dict(demo))


def export(program: Program, dspy_version: str | None) -> dict:
    predictors = {
        name: {"instructions": predictor.signature.instructions,
               "demos": [demo_to_json(d) for d in predictor.demos]}
        for name, predictor in program.predictors()
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "program_id": program.program_id,
        "module": program.module_name,
        "options": dict(program.options),
        # A program of an exposed dspy.Module class has no signature of its own (exposed.py).
        **({"signature": spec.ordered(program.spec)} if program.spec is not None else {}),
        "state": {"predictors": predictors},
        "optimizations": list(program.optimizations),
        "exported_by": {"portbridge": __version__, "dspy": dspy_version},
    }


def _refuse(code: str, message: str, path: str):
    return validation_error(code, f"{path}: {message}", path=path)


def load(dspy, doc: dict, program_id: str) -> Program:
    """Rebuild a program from an export document; raises ``validation`` for anything malformed or mismatched."""
    path = "args.program"
    check_document(doc, DOC_KEYS, path)
    module_name = doc.get("module")
    if module_name not in MODULES:
        raise _refuse("bad_program_document", f"module must be one of {sorted(MODULES)}", f"{path}.module")
    signature_spec = spec.parse_signature(doc.get("signature"))
    options = check_options(doc.get("options"), f"{path}.options", module_name, signature_spec)
    program = create(dspy, program_id, module_name, signature_spec, options)
    load_state(dspy, program, doc.get("state"), f"{path}.state")
    load_history(program, doc, path)
    return program


def check_document(doc: dict, keys: set, path: str) -> None:
    """An export document's keys, format and version."""
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise _refuse("bad_program_document", f"unknown key(s) {unknown}", path)
    if doc.get("format") != FORMAT:
        raise _refuse("bad_program_document", f"format must be {FORMAT!r} (a document from export_program)", path)
    if doc.get("version") != VERSION:
        raise _refuse("unsupported_version", f"version {doc.get('version')!r} is not supported (this worker "
                      f"reads version {VERSION})", path)


def load_state(dspy, program: Program, state, path: str) -> None:
    """Each predictor's learned instructions and demos into ``program`` (just built), after checking
    that the document names exactly its predictors, and each demo (``program.check_demo``)."""
    if not isinstance(state, dict) or set(state) != {"predictors"} or not isinstance(state["predictors"], dict):
        raise _refuse("bad_program_document", "state must be {\"predictors\": {name: {...}}}", path)
    named = dict(program.predictors())
    if set(state["predictors"]) != set(named):
        raise _refuse("program_mismatch", f"state names predictors {sorted(state['predictors'])}, but a "
                      f"{program.module_name} has {sorted(named)}", f"{path}.predictors")
    for name, predictor in named.items():
        where = f"{path}.predictors.{name}"
        learned = state["predictors"][name]
        if not isinstance(learned, dict) or set(learned) != {"instructions", "demos"}:
            raise _refuse("bad_program_document", "a predictor's state is {\"instructions\", \"demos\"}", where)
        instructions = learned["instructions"]
        if not isinstance(instructions, str) or len(instructions) > spec.MAX_INSTRUCTIONS_CHARS:
            raise _refuse("bad_program_document", "instructions must be a string of at most "
                          f"{spec.MAX_INSTRUCTIONS_CHARS} characters", f"{where}.instructions")
        teach(dspy, program, name, predictor, instructions, learned["demos"], where, "bad_program_document")


def teach(dspy, program: Program, name: str, predictor, instructions: str, demos, where: str, code: str) -> int:
    """Give ``predictor`` (``name`` in ``program``) learned ``instructions`` and ``demos``, once the demos are
    checked: a list of at most MAX_DEMOS, each as ``program.check_demo`` says (else a ``validation`` error
    ``code`` at ``where``). Returns how many demos it holds now."""
    if not isinstance(demos, list) or len(demos) > MAX_DEMOS:
        raise _refuse(code, f"demos must be a list of at most {MAX_DEMOS}", f"{where}.demos")
    for i, demo in enumerate(demos):
        program.check_demo(demo, name, f"{where}.demos[{i}]")
    if instructions != predictor.signature.instructions:
        predictor.signature = predictor.signature.with_instructions(instructions)
    predictor.demos = [dspy.Example(**demo) for demo in demos]
    return len(demos)


def load_history(program: Program, doc: dict, path: str) -> None:
    """What optimisers did to the exported program (the last 100), kept by the imported one."""
    optimizations = doc.get("optimizations", [])
    if not isinstance(optimizations, list) or not all(isinstance(o, dict) for o in optimizations):
        raise _refuse("bad_program_document", "optimizations must be a list of maps", f"{path}.optimizations")
    program.optimizations = optimizations[-100:]
    program.created_at = time.time()


def demo_fields_of(program: Program):
    """``fields(predictor name) -> {field: [types]}``: what a demo of each of the program's predictors may hold."""
    if program.module_name == PIPELINE:
        return pipeline.demo_fields(program.options, program.spec)
    fields = build.demo_fields(program.module_name, program.spec, program.options)
    types = {name: [field["type"]] for name, field in fields.items()}
    return lambda predictor: types


def check_demo(demo, fields: dict, path: str) -> None:
    """``fields``: ``{field: [types]}``, a value fitting any of them (None: ReAct's next_tool_args, a map)."""
    if not isinstance(demo, dict) or not demo:
        raise _refuse("bad_demo", "a demo is a non-empty map of field -> value", path)
    for key, value in demo.items():
        if key == AUGMENTED:
            if not isinstance(value, bool):
                raise _refuse("bad_demo", "augmented must be true or false", f"{path}.{key}")
        elif key not in fields:
            raise _refuse("bad_demo", f"{key!r} is not a field of this program ({sorted(fields)})", f"{path}.{key}")
        else:
            _check_value(fields[key], value, f"{path}.{key}")


def _check_value(types: list, value, path: str) -> None:
    if None in types and (isinstance(value, dict) or len(types) > 1):
        return  # any JSON object (ReAct's next_tool_args), or any value (a pipeline field bound to one)
    first = None
    for kind in types:
        try:
            if kind is None:
                raise _refuse("bad_demo", "must be a map", path)
            fieldtypes.check(kind, value, path)
            return
        except BridgeError as exc:
            first = first or exc
    raise first
