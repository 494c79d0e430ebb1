"""What a program declares beside its module and signature: adapter, retrieve step, tools, reward.

``options_of`` checks them for ``create_program`` (and for each step of a
pipeline), ``check_options`` for an ``import_program`` document; both return
the canonical options a program keeps and exports. Imported after the gate.
"""

from __future__ import annotations

from ...errors import validation_error
from . import agents
from .catalog import ADAPTERS, BASE_MODULES, WRAPPERS
from .retrieval import check_pipeline

AGENT_KEYS = ("tools", "max_iters")  # ReAct, also as a base_module
WRAPPER_KEYS = ("base_module", "N", "reward_fn", "threshold", "fail_count")  # BestOfN, Refine
OPTION_KEYS = {"adapter", "retrieve", *AGENT_KEYS, *WRAPPER_KEYS}


def options_of(args: dict, module_name: str, signature_spec: dict, path: str = "args") -> dict:
    """What a program declares beside module and signature (adapter, retrieve step, tools, reward), checked."""
    options = {"adapter": args.get("adapter", "chat")}
    if args.get("retrieve") is not None:
        options["retrieve"] = check_pipeline(args["retrieve"], signature_spec, f"{path}.retrieve")
    wrapper = module_name in WRAPPERS
    base = args.get("base_module", "Predict") if wrapper else module_name
    given = {key for key in (*AGENT_KEYS, *WRAPPER_KEYS) if args.get(key) is not None}
    wrong = sorted(given - set(WRAPPER_KEYS if wrapper else ()) - set(AGENT_KEYS if base == "ReAct" else ()))
    if wrong:
        raise validation_error("option_not_applicable", f"{path}: {wrong} do not apply to a {module_name} "
                               f"program" + (f" around {base}" if wrapper else ""), path=path, options=wrong)
    if wrapper:
        missing = [key for key in ("N", "reward_fn", "threshold") if args.get(key) is None]
        if missing:
            raise validation_error("missing_option", f"{path}: a {module_name} program needs {missing}", path=path)
        if base not in BASE_MODULES:
            raise validation_error("bad_program", f"{path}.base_module: one of {list(BASE_MODULES)}",
                                   path=f"{path}.base_module")
        options.update(base_module=base, N=args["N"], threshold=args["threshold"],
                       reward_fn={"callback": agents.check_callback_ref(args["reward_fn"], f"{path}.reward_fn")})
        if args.get("fail_count") is not None:
            options["fail_count"] = args["fail_count"]
    if base == "ReAct":
        if args.get("tools") is None:
            raise validation_error("missing_option", f"{path}.tools: a ReAct program needs its tools",
                                   path=f"{path}.tools")
        options["tools"] = agents.check_tools(args["tools"], f"{path}.tools")
        options["max_iters"] = args.get("max_iters", agents.DEFAULT_MAX_ITERS)
    return options


def check_options(options, path: str, module_name: str, signature_spec: dict) -> dict:
    """Options from an export document (older documents have none: the defaults)."""
    if options is None:
        return options_of({}, module_name, signature_spec, path)
    if not isinstance(options, dict) or set(options) - OPTION_KEYS:
        raise _refuse(f"options is a map with {sorted(OPTION_KEYS)}", path)
    if options.get("adapter", "chat") not in ADAPTERS:
        raise _refuse(f"options.adapter must be one of {sorted(ADAPTERS)}", path)
    retrieve = options.get("retrieve")
    if retrieve is not None and (not isinstance(retrieve, dict) or not isinstance(retrieve.get("index_id"), str)
                                 or set(retrieve) - {"index_id", "query", "context", "k"}):
        raise _refuse("options.retrieve is {index_id, query, context, k}", path)
    return options_of(options, module_name, signature_spec, path)


def _refuse(message: str, path: str):
    return validation_error("bad_program_document", f"{path}: {message}", path=path)
