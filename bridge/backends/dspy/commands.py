"""The DSPy commands: ``handler(ctx, args) -> result``, each registered with its schema.

Handlers do the protocol part (scope, ids, result shape) and hand the work to
the modules that know DSPy. Each one first passes the import gate, so a
command that arrives while DSPy is still importing waits for it.
"""

from __future__ import annotations

import re

from . import schemas, spec
from .state import scope_of

BACKEND = "dspy"


def register(registry, gate) -> None:
    def command(name: str, schema: dict, description: str):
        return registry.command(name, schema=schema, backend=BACKEND, description=description)

    def scopes(ctx):
        return scope_of(ctx.store), scope_of(ctx.global_store)

    @command("configure_lm", schemas.CONFIGURE_LM, "set the LM of this session (or the global one)")
    def configure_lm(ctx, args):
        dspy = gate.require()
        from . import lms

        scope, _ = scopes(ctx)
        config = lms.build(dspy, args)
        with scope.lock:
            scope.lm = config
        return {**config.describe(), "scope": "session" if ctx.session_id is not None else "global"}

    @command("create_program", schemas.CREATE_PROGRAM, "build a Predict or ChainOfThought program from a signature")
    def create_program(ctx, args):
        signature_spec = spec.parse_signature(args["signature"], args.get("instructions"))
        dspy = gate.require()
        from . import programs

        scope, _ = scopes(ctx)
        program = programs.create(dspy, args.get("program_id") or scope.new_id(), args["module"], signature_spec)
        scope.put(program, args["replace"])
        return program.describe()

    @command("execute_program", schemas.EXECUTE_PROGRAM, "run a program on one set of inputs (stream: chunk events)")
    def execute_program(ctx, args):
        dspy = gate.require()
        from . import running

        scope, global_scope = scopes(ctx)
        program = scope.get(args["program_id"])
        return running.execute(ctx, dspy, scope, global_scope, program, args["inputs"], args["stream"])

    @command("list_programs", schemas.NO_ARGS, "the programs of this scope")
    def list_programs(ctx, args):
        programs = scopes(ctx)[0].listing()
        return {"programs": programs, "count": len(programs)}

    @command("get_program", schemas.BY_ID, "one program's definition and state summary")
    def get_program(ctx, args):
        return scopes(ctx)[0].get(args["program_id"]).describe()

    @command("delete_program", schemas.BY_ID, "forget a program")
    def delete_program(ctx, args):
        scopes(ctx)[0].delete(args["program_id"])
        return {"program_id": args["program_id"], "deleted": True}

    @command("export_program", schemas.BY_ID, "a program as a JSON document: definition and learned state")
    def export_program(ctx, args):
        gate.require()  # programs.py imports pydantic: never while DSPy imports on another thread
        from . import programs

        program = scopes(ctx)[0].get(args["program_id"])
        return {"program": programs.export(program, gate.version)}

    @command("import_program", schemas.IMPORT_PROGRAM, "rebuild a program from an export_program document")
    def import_program(ctx, args):
        dspy = gate.require()
        from . import programs

        scope, _ = scopes(ctx)
        doc = args["program"]
        program_id = args.get("program_id") or doc.get("program_id")
        if not isinstance(program_id, str) or not re.match(schemas.PROGRAM_ID["pattern"], program_id):
            program_id = scope.new_id()
        program = programs.load(dspy, doc, program_id)
        scope.put(program, args["replace"])
        return program.describe()

    @command("optimize_program", schemas.OPTIMIZE_PROGRAM, "LabeledFewShot or BootstrapFewShot over a trainset")
    def optimize_program(ctx, args):
        gate.require()
        from . import optimize

        scope, global_scope = scopes(ctx)
        program = scope.get(args["program_id"])
        return optimize.run(ctx, scope, global_scope, program, args)

    @command("lm_usage", schemas.LM_USAGE, "token usage per model of this scope's calls")
    def lm_usage(ctx, args):
        scope, global_scope = scopes(ctx)
        report = scope.usage_report(reset=args["reset"])
        config = scope.lm or global_scope.lm
        return {"scope": "session" if ctx.session_id is not None else "global",
                "models": report, "lm": config.describe() if config else None}
