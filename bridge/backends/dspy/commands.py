"""The DSPy commands: plain ``handler(ctx, args) -> result`` functions, and the table that registers them.

Handlers do the protocol part (scope, ids, result shape) and hand the work to
the modules that know DSPy. Each one that needs DSPy first passes the import
gate (``GATE.require()``), so a command that arrives while DSPy is still
importing waits for it; the modules that import DSPy are imported inside the
handlers, after that gate, because this one is imported when the backend
registers, before DSPy. A handler touches its request only through the
narrow context: ``scopes(ctx)`` for the stores, and ``ctx.emit``,
``ctx.remaining``, ``ctx.check``; a test can call any of them with a context
of its own.
"""

from __future__ import annotations

import re
import uuid

from ...errors import validation_error
from ...sdk.programs import is_exposed_name
from . import schemas, spec
from .loader import GATE
from .state import Scope, index_exists, scope_of

BACKEND = "dspy"


def scopes(ctx) -> tuple[Scope, Scope]:
    """This request's scope (its session, or the global one) and the global scope."""
    return scope_of(ctx.store), scope_of(ctx.global_store)


def scope_name(ctx) -> str:
    return "session" if ctx.session_id is not None else "global"


def configure_lm(ctx, args):
    dspy = GATE.require()
    from . import lms

    scope, _ = scopes(ctx)
    config = lms.build(dspy, args)
    with scope.lock:
        scope.lm = config
    return {**config.describe(), "scope": scope_name(ctx)}


def create_program(ctx, args):
    own = is_exposed_name(args["module"])  # a dspy.Module class the operator exposed (bridge.sdk @program)
    if not own and "signature" not in args:
        raise validation_error("missing_signature", f"args.signature: a {args['module']} program is built from a "
                               "signature", path="args.signature")
    if not own and "init" in args:
        raise validation_error("option_not_applicable", f"args.init: only a dspy.Module class the worker exposes "
                               f"takes init, not {args['module']}", path="args.init")
    signature_spec = None if own else spec.parse_signature(args["signature"], args.get("instructions"))
    dspy = GATE.require()
    from . import exposed, programs

    scope, _ = scopes(ctx)
    program_id = args.get("program_id") or scope.new_id()
    if own:
        program = exposed.create(args, program_id)
    else:
        program = programs.create(dspy, program_id, args["module"], signature_spec,
                                  programs.options_of(args, args["module"], signature_spec))
    scope.put(program, args["replace"])
    return program.describe()


def execute_program(ctx, args):
    dspy = GATE.require()
    from . import running

    scope, global_scope = scopes(ctx)
    program = scope.get(args["program_id"])
    return running.execute(ctx, dspy, scope, global_scope, program, args["inputs"], args["stream"], args["trace"],
                           args.get("lm"))


def list_programs(ctx, args):
    programs = scopes(ctx)[0].listing()
    return {"programs": programs, "count": len(programs)}


def get_program(ctx, args):
    return scopes(ctx)[0].get(args["program_id"]).describe()


def delete_program(ctx, args):
    scopes(ctx)[0].delete(args["program_id"])
    return {"program_id": args["program_id"], "deleted": True}


def export_program(ctx, args):
    GATE.require()  # programs.py imports pydantic: never while DSPy imports on another thread
    from . import programs

    program = scopes(ctx)[0].get(args["program_id"])
    return {"program": programs.export(program, GATE.version)}


def import_program(ctx, args):
    dspy = GATE.require()
    from . import exposed, programs

    scope, _ = scopes(ctx)
    if ("program" in args) == ("dspy_state" in args):
        raise validation_error("bad_import", "args: give either program (an export_program document) or "
                               "dspy_state (with the program_id of an existing program)", path="args")
    if "dspy_state" in args:
        return _load_dspy_state(dspy, scope, args)
    doc = args["program"]
    program_id = args.get("program_id") or doc.get("program_id")
    if not isinstance(program_id, str) or not re.match(schemas.PROGRAM_ID["pattern"], program_id):
        program_id = scope.new_id()
    load = exposed.load if is_exposed_name(doc.get("module")) else programs.load
    program = load(dspy, doc, program_id)
    scope.put(program, args["replace"])
    return program.describe()


def _load_dspy_state(dspy, scope: Scope, args: dict) -> dict:
    from . import dspy_state

    if not args.get("program_id"):
        raise validation_error("missing_program_id", "args.program_id: dspy_state loads into an existing program; "
                               "create it first (the same module and signature) and name it here",
                               path="args.program_id")
    loaded, report = dspy_state.load_into(dspy, scope.get(args["program_id"]), args["dspy_state"])
    scope.put(loaded, replace=True)
    return {**loaded.describe(), "dspy_state": report}


def optimize_program(ctx, args):
    GATE.require()
    from . import optimize

    scope, global_scope = scopes(ctx)
    program = scope.get(args["program_id"])
    return optimize.run(ctx, scope, global_scope, program, args)


def evaluate_program(ctx, args):
    GATE.require()
    from . import evaluate

    scope, global_scope = scopes(ctx)
    return evaluate.run(ctx, scope, global_scope, scope.get(args["program_id"]), args)


def lm_usage(ctx, args):
    scope, global_scope = scopes(ctx)
    report = scope.usage_report(reset=args["reset"])
    config = scope.lm or global_scope.lm
    costs = [counters["cost_usd"] for counters in report.values() if counters.get("cost_usd") is not None]
    return {"scope": scope_name(ctx), "models": report, "cost_usd": sum(costs) if costs else None,
            "lm": config.describe() if config else None}


def configure_embedder(ctx, args):
    GATE.require()
    from . import retrieval

    scope, _ = scopes(ctx)
    config = retrieval.build_embedder(args)
    with scope.lock:
        scope.embedder = config
    return {**config.describe(), "scope": scope_name(ctx)}


def create_index(ctx, args):
    GATE.require()
    from . import retrieval

    scope, global_scope = scopes(ctx)
    index_id = args.get("index_id") or f"index_{uuid.uuid4().hex[:12]}"
    if index_id in scope.indexes and not args["replace"]:
        raise index_exists(index_id)  # before any embedding call
    config = retrieval.resolve_embedder(scope, global_scope)
    index = retrieval.build_index(ctx, config, index_id, args["corpus"], args["k"])
    scope.put_index(index, args["replace"])
    return {**index.describe(), "scope": scope_name(ctx)}


def retrieve(ctx, args):
    GATE.require()
    from .running import scope_indexes

    index = scope_indexes(*scopes(ctx))(args["index_id"])
    hits = index.search(args["query"], args.get("k"), ctx.remaining())
    return {"index_id": index.index_id, **hits.to_json()}


def list_indexes(ctx, args):
    scope = scopes(ctx)[0]
    with scope.lock:
        indexes = [index.describe() for index in scope.indexes.values()]
    return {"indexes": indexes, "count": len(indexes)}


def delete_index(ctx, args):
    scopes(ctx)[0].delete_index(args["index_id"])
    return {"index_id": args["index_id"], "deleted": True}


# name -> (handler, argument schema, one-line description for describe)
COMMANDS = {
    "configure_lm": (configure_lm, schemas.CONFIGURE_LM, "set the LM of this session (or the global one)"),
    "create_program": (create_program, schemas.CREATE_PROGRAM, "build a program from a signature"),
    "execute_program": (execute_program, schemas.EXECUTE_PROGRAM,
                        "run a program on one set of inputs (stream: chunk events)"),
    "list_programs": (list_programs, schemas.NO_ARGS, "the programs of this scope"),
    "get_program": (get_program, schemas.BY_ID, "one program's definition and state summary"),
    "delete_program": (delete_program, schemas.BY_ID, "forget a program"),
    "export_program": (export_program, schemas.BY_ID, "a program as a JSON document: definition and learned state"),
    "import_program": (import_program, schemas.IMPORT_PROGRAM, "rebuild a program from an export_program document, "
                       "or load DSPy's own saved state (module.save JSON) into an existing program"),
    "optimize_program": (optimize_program, schemas.OPTIMIZE_PROGRAM, "tune a program's demos and instructions "
                         "over a trainset"),
    "evaluate_program": (evaluate_program, schemas.EVALUATE_PROGRAM, "score a program over a labelled devset "
                         "(per-example results; progress events)"),
    "lm_usage": (lm_usage, schemas.LM_USAGE, "token usage per model of this scope's calls"),
    "configure_embedder": (configure_embedder, schemas.CONFIGURE_EMBEDDER,
                           "set the embedding model of this session (or the global one)"),
    "create_index": (create_index, schemas.CREATE_INDEX, "embed a corpus into a retrieval index held in the "
                     "scope (progress events)"),
    "retrieve": (retrieve, schemas.RETRIEVE, "the top k passages of an index for a query, with scores"),
    "list_indexes": (list_indexes, schemas.NO_ARGS, "the retrieval indexes of this scope"),
    "delete_index": (delete_index, schemas.BY_INDEX, "forget a retrieval index (frees its memory)"),
}


def register(registry) -> None:
    for name, (handler, schema, description) in COMMANDS.items():
        registry.command(name, schema=schema, backend=BACKEND, description=description)(handler)
