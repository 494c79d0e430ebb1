"""Argument schemas of the DSPy commands (the subset of JSON Schema in ``bridge.schema``).

They are what ``describe`` shows and what the core enforces before a handler
runs, so a malformed request fails with ``validation`` before any DSPy work.
Deeper checks that need the signature (inputs, trainsets, documents) happen
in the handlers, still before any LM call.
"""

from __future__ import annotations

from ... import registry
from . import metrics, spec
from .catalog import (ADAPTERS, MAX_CORPUS, MAX_DEMOS, MAX_DIMS, MAX_K, MAX_PASSAGE_CHARS, MAX_SCRIPTED_ANSWERS,
                      MAX_TRAINSET, MODULES, OPTIMIZERS, PIPELINE)


def _object(properties: dict, required=(), description: str = "") -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


PROGRAM_ID = {
    "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
    "description": "a program's id in this scope (letters, digits, _ . : -; at most 128)",
}
REPLACE = {"type": "boolean", "default": False, "description": "replace a program of the same id"}
DEMO_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_DEMOS}

CONFIGURE_LM = _object({
    "model": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^\S+$",
              "description": "a DSPy model string such as 'openai/gpt-4o-mini', 'offline' (built-in, "
                             "deterministic, no network) or 'scripted' (answers given as data, for tests)"},
    "api_key": {"type": "string", "minLength": 1, "maxLength": 8192,
                "description": "the provider's key; never echoed, logged or exported"},
    "api_base": {"type": "string", "maxLength": 2048, "pattern": r"^https?://\S+$",
                 "description": "the provider's base URL, e.g. http://127.0.0.1:8000/v1"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    "cache": {"type": "boolean", "default": False,
              "description": "DSPy's response cache; off by default (it is process-wide and keyed "
                             "without api_base or api_key)"},
    "num_retries": {"type": "integer", "minimum": 0, "maximum": 10,
                    "description": "retries of transient LM failures (default 3); with rate_limit the bridge "
                                   "makes them, asking admission before each"},
    "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 3600,
                  "description": "the LM client's read timeout; a request's timeout_ms shortens it"},
    "rate_limit": _object({
        "requests_per_minute": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "tokens_per_minute": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "burst": {"type": "integer", "minimum": 1, "maximum": 10_000,
                  "description": "calls allowed to start at once (the client's limiter decides)"},
    }, (), "the provider's limits, enforced by the client: before every LM HTTP attempt the worker asks it with "
           "the portbridge.admit callback (or starts it on a lease the client granted), reports failed attempts "
           "(and, with tokens_per_minute, every call) as lm_call events, and (instead of DSPy) retries failed "
           "attempts up to num_retries within the request's deadline. Give requests_per_minute or "
           "tokens_per_minute"),
    "answers": {"type": "array", "minItems": 1, "maxItems": MAX_SCRIPTED_ANSWERS,
                "items": {"type": "object", "maxProperties": spec.MAX_FIELDS},
                "description": "model 'scripted' only: one {output field: value} map per LM call, used in order and "
                               "written in the calling adapter's format (chat, json, xml), as DSPy's DummyLM; when "
                               "they run out a call fails with execution/scripted_answers_exhausted"},
}, ["model"], "with session_id: that session's LM; without: the global LM (used by sessions that have none)")

INDEX_ID = {
    "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
    "description": "an index's id in this scope (letters, digits, _ . : -; at most 128)",
}
K = {"type": "integer", "minimum": 1, "maximum": MAX_K, "description": "passages to retrieve"}

CONFIGURE_EMBEDDER = _object({
    "model": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^\S+$",
              "description": "a provider's embedding model through dspy.Embedder (litellm), such as "
                             "'openai/text-embedding-3-small', or 'offline' (built-in, deterministic, no network)"},
    "api_key": CONFIGURE_LM["properties"]["api_key"],
    "api_base": CONFIGURE_LM["properties"]["api_base"],
    "dimensions": {"type": "integer", "minimum": 1, "maximum": MAX_DIMS,
                   "description": "the vector size: sent to the provider (models that support it), or the "
                                  "offline embedder's (default 256)"},
    "batch_size": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 200,
                   "description": "texts per embedding call"},
    "num_retries": CONFIGURE_LM["properties"]["num_retries"],
    "timeout_s": CONFIGURE_LM["properties"]["timeout_s"],
}, ["model"], "with session_id: that session's embedder; without: the global one (used by sessions that have none)")

CREATE_INDEX = _object({
    "index_id": INDEX_ID,
    "corpus": {"type": "array", "minItems": 1, "maxItems": MAX_CORPUS, "items": {"type": "string", "maxLength": MAX_PASSAGE_CHARS},
               "description": "the passages, embedded with the scope's embedder and held in the scope"},
    "k": {**K, "default": 5, "description": "passages a search returns unless it asks otherwise"},
    "replace": {"type": "boolean", "default": False, "description": "replace an index of the same id"},
}, ["corpus"])

RETRIEVE = _object({
    "index_id": INDEX_ID,
    "query": {"type": "string", "maxLength": 10_000},
    "k": K,
}, ["index_id", "query"])

BY_INDEX = _object({"index_id": INDEX_ID}, ["index_id"])

RETRIEVE_OPTION = _object({
    "index_id": {**INDEX_ID, "description": "the index searched at each run (this scope's, else the global one)"},
    "query": {"type": "string", "default": "question", "description": "the str input that is the search query"},
    "context": {"type": "string", "default": "context",
                "description": "the input (str or list[str]) the passages fill; callers do not send it"},
    "k": {**K, "description": "passages to retrieve (default: the index's k)"},
}, ["index_id"], "retrieve -> generate: the query input is searched and the top k passages fill the context input "
   "before the module runs (execute_program also returns them as retrieved)")

REFERENCE = {"type": "string", "maxLength": 200,
             "description": "a pipeline input ('question') or an earlier step's output ('hop1.search_query')"}
MAX_STEPS = 32  # in a pipeline, groups and their steps included
MAX_REPEAT = 10

CALLBACK_NAME = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$",
                 "description": "a callback name the client answers (letters, digits, _ and -)"}
CALLBACK = _object({"callback": CALLBACK_NAME}, ["callback"])
TOOL = _object({
    "name": {**CALLBACK_NAME, "description": "the tool's name: the callback the worker sends (not 'finish')"},
    "description": {"type": "string", "maxLength": 2000},
    "parameters": {"type": "object", "description": "a JSON Schema object for the tool's arguments (the "
                                                    "keywords of describe's argument schemas); the arguments "
                                                    "the LM chooses are checked against it before the callback"},
}, ["name"])

TYPE_HELP = ("signature: DSPy's string form 'question, context: list[str] -> answer: int' (a field without a "
             "type is a str; no descriptions), or {\"name\", \"instructions\", \"inputs\": {field: {\"type\", "
             "\"desc\"}}, \"outputs\": {...}} (or lists of {\"name\", \"type\", \"desc\"}, which keep the fields' "
             "order) with types str, int, float, bool, list[T], dict[str, T], "
             "Optional[T] (or T | None), Literal['a', 1] (or {\"literal\": [...]}), {\"object\": {field: {...}}, "
             "\"name\"}, and for inputs history (dspy.History) and image (dspy.Image); both forms use one whitelist "
             "and nothing is evaluated or imported")

EXPOSED_MODULE = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,63}\.[A-Za-z_][A-Za-z0-9_]{0,63}$",
                  "description": "'<namespace>.<Class>': a dspy.Module class the worker's operator exposed "
                                 "(describe: backends.dspy.exposed_programs)"}

CREATE_PROGRAM = _object({
    "signature": {"anyOf": [{"type": "string", "minLength": 3, "maxLength": spec.MAX_STRING_CHARS},
                            {"type": "object"}], "description": TYPE_HELP + " (every module but an exposed one)"},
    "module": {"anyOf": [{"enum": list(MODULES)}, EXPOSED_MODULE], "default": "Predict",
               "description": "a module built from the signature (" + ", ".join(MODULES) + "), or "
                              "'<namespace>.<Class>', a dspy.Module class the worker's operator exposed"},
    "init": {"type": "object", "description": "module '<namespace>.<Class>': the arguments of its __init__, checked "
                                              "against the schema describe lists for it"},
    "adapter": {"enum": list(ADAPTERS), "default": "chat",
                "description": "how prompts and answers are formatted: " + "; ".join(
                    f"{name}: {text}" for name, text in ADAPTERS.items())},
    "program_id": PROGRAM_ID,
    "instructions": {"type": "string", "maxLength": spec.MAX_INSTRUCTIONS_CHARS,
                     "description": "the task description (overrides the signature's)"},
    "retrieve": RETRIEVE_OPTION,
    "tools": {"type": "array", "minItems": 1, "maxItems": 32, "items": TOOL,
              "description": "ReAct (also as base_module): the tools the agent may call; each call is a callback "
                             "event with the tool's arguments, its result the observation"},
    "max_iters": {"type": "integer", "minimum": 1, "maximum": 50,
                  "description": "ReAct: at most this many tool calls (default 20, as dspy.ReAct)"},
    "base_module": {"enum": ["Predict", "ChainOfThought", "ReAct"],
                    "description": "BestOfN, Refine: the module they run N times (default Predict)"},
    "N": {"type": "integer", "minimum": 1, "maximum": 32, "description": "BestOfN, Refine: attempts"},
    "reward_fn": {**CALLBACK, "description": "BestOfN, Refine: {\"callback\": name}, called with {inputs, "
                                             "prediction}, answering a number"},
    "threshold": {"type": "number", "description": "BestOfN, Refine: stop at the first reward at least this"},
    "fail_count": {"type": "integer", "minimum": 1, "maximum": 32,
                   "description": "BestOfN, Refine: failed attempts allowed (default N)"},
    "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": {"type": "object"},
              "description": "module Pipeline: the steps, run in order; each a module step {name, module, "
                             "signature, inputs, ...that module's options}, a retrieve step {name, retrieve: "
                             "{index_id, query, k}} or a group {name, repeat, steps, collect} (describe's "
                             "backends.dspy.pipeline has their schemas)"},
    "outputs": {"type": "object", "maxProperties": spec.MAX_FIELDS, "additionalProperties": REFERENCE,
                "description": "module Pipeline: each output of the signature -> a reference 'step.field' "
                               "(default: the same-named output of the last step that has one)"},
    "replace": REPLACE,
})

STEP_NAME = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]{0,63}$",
             "description": "unique in the pipeline; a module step's predictors are named after it "
                            "('<name>.predict' for ChainOfThought, as an attribute of a dspy.Module)"}
MODULE_STEP = _object({
    "name": STEP_NAME,
    "module": {"enum": [m for m in MODULES if m != PIPELINE], "default": "Predict"},
    "signature": CREATE_PROGRAM["properties"]["signature"],
    "instructions": CREATE_PROGRAM["properties"]["instructions"],
    "inputs": {"type": "object", "maxProperties": spec.MAX_FIELDS, "additionalProperties": REFERENCE,
               "description": "each input field of the step -> a reference; a field left out reads the "
                              "pipeline input of the same name"},
    **{key: CREATE_PROGRAM["properties"][key] for key in
       ("tools", "max_iters", "base_module", "N", "reward_fn", "threshold", "fail_count")},
}, ["name", "signature"], "a module step: any module create_program builds, with that module's options")
RETRIEVE_STEP = _object({
    "name": STEP_NAME,
    "retrieve": _object({
        "index_id": RETRIEVE_OPTION["properties"]["index_id"],
        "query": {**REFERENCE, "default": "question", "description": "the reference searched (as a str)"},
        "k": RETRIEVE_OPTION["properties"]["k"],
    }, ["index_id"]),
}, ["name", "retrieve"], "a retrieve step: its output is passages, the top k passages (a list of str)")
GROUP = _object({
    "name": STEP_NAME,
    "repeat": {"type": "integer", "minimum": 1, "maximum": MAX_REPEAT, "description": "repetitions"},
    "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": {"type": "object"},
              "description": "module and retrieve steps (groups do not nest); each is one module, reused "
                             "on every repetition"},
    "collect": {"type": "object", "maxProperties": spec.MAX_FIELDS, "additionalProperties": REFERENCE,
                "description": "name -> a reference to an output of a step of the group: the values of "
                               "every repetition, flattened into one list, read as '<group>.<name>' (inside "
                               "the group: what was collected so far)"},
}, ["name", "repeat", "steps"], "a group: its steps run repeat times (multi-hop)")

STOP = {"type": "string", "minLength": 1, "maxLength": 256}

EXECUTE_PROGRAM = _object({
    "program_id": PROGRAM_ID,
    "inputs": {"type": "object", "maxProperties": spec.MAX_FIELDS,
               "description": "one value per input field of the signature, of its type"},
    "stream": {"type": "boolean", "default": False,
               "description": "send chunk events {field, text, predictor, last} as the LM writes: each field's "
                              "own text (chat, json and xml adapters; a two_step program cannot stream)"},
    "trace": {"type": "boolean", "default": False,
              "description": "a Pipeline program: add trace, [{step, inputs, outputs}] for every step run "
                             "(a group's steps add iteration, from 0)"},
    "lm": _object({
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {**STOP, "type": ["string", "array"], "minItems": 1, "maxItems": 4, "items": STOP,
                 "description": "a stop sequence, or a list of up to 4"},
        "n": {"type": "integer", "minimum": 1, "maximum": 16, "description": "completions per LM call (the first "
                                                                              "is the output)"},
        "rollout_id": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,
                       "description": "tells apart otherwise identical calls in DSPy's cache"},
    }, (), "LM options for every LM call of this run only, as DSPy's per-call config (program(..., config=...)); "
           "the scope's LM is unchanged"),
}, ["program_id", "inputs"])

NO_ARGS = registry.NO_ARGS
BY_ID = _object({"program_id": PROGRAM_ID}, ["program_id"])

IMPORT_PROGRAM = _object({
    "program": {"type": "object", "description": "a document from export_program (or give dspy_state)"},
    "dspy_state": {"type": "object", "description": "instead of program: the JSON that DSPy's module.save(\"x.json\") "
                                                    "writes, loaded into the existing program program_id (of the same "
                                                    "structure: predictors, fields and demos are checked): its "
                                                    "instructions and demos; an LM saved with it is ignored"},
    "program_id": {**PROGRAM_ID, "description": "the id to import as (default: the document's); with dspy_state, "
                                                "the existing program to load it into"},
    "replace": REPLACE,
})

EXAMPLE = _object({"inputs": {"type": "object"}, "outputs": {"type": "object"}}, ["inputs", "outputs"])

JUDGE = _object({
    "signature": {"anyOf": [{"type": "string", "minLength": 3, "maxLength": spec.MAX_STRING_CHARS},
                            {"type": "object"}], "description": "the judge's signature (as create_program's)"},
    "instructions": {"type": "string", "maxLength": spec.MAX_INSTRUCTIONS_CHARS},
    "module": {"enum": ["Predict", "ChainOfThought"], "default": "Predict"},
    "inputs": {"type": "object", "maxProperties": spec.MAX_FIELDS,
               "additionalProperties": {"type": "string", "maxLength": 200},
               "description": "judge input -> 'example.<field>' or 'prediction.<output>'"},
    "score": {"type": "string", "maxLength": 64, "description": "the judge output (bool, int or float) that "
                                                                "is the score"},
}, ["signature", "inputs", "score"])

METRIC = {
    "anyOf": [{"enum": list(metrics.METRICS)}, _object({"judge": JUDGE}, ["judge"]), CALLBACK],
    "default": "exact_match",
    "description": "a named metric (" + ", ".join(metrics.METRICS) + "), {\"judge\": {...}}: an LM judge "
                   "declared as data, or {\"callback\": name}: the client scores each prediction (called with "
                   "{example: {inputs, outputs}, prediction}, answering a number, a bool or {score, feedback})",
}
METRIC_FIELDS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": spec.MAX_FIELDS,
                 "description": "the outputs a named metric compares (default: each example's labelled ones)"}

EVALUATE_PROGRAM = _object({
    "program_id": PROGRAM_ID,
    "devset": {"type": "array", "minItems": 1, "maxItems": MAX_TRAINSET, "items": EXAMPLE},
    "metric": METRIC,
    "metric_fields": METRIC_FIELDS,
    "num_threads": {"type": "integer", "minimum": 1, "maximum": 32, "default": 1,
                    "description": "examples run at once (DSPy's ParallelExecutor)"},
    "max_errors": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET,
                   "description": "stop after this many failed examples (default: never)"},
    "return_outputs": {"type": "boolean", "default": True, "description": "each result carries its outputs"},
}, ["program_id", "devset"])

OPTIMIZE_PROGRAM = _object({
    "program_id": PROGRAM_ID,
    "optimizer": {"enum": list(OPTIMIZERS)},
    "trainset": {"type": "array", "minItems": 1, "maxItems": MAX_TRAINSET, "items": EXAMPLE},
    "metric": METRIC,
    "metric_fields": METRIC_FIELDS,
    "valset": {"type": "array", "minItems": 1, "maxItems": MAX_TRAINSET, "items": EXAMPLE,
               "description": "held-out examples (BootstrapFewShotWithRandomSearch, MIPROv2, GEPA)"},
    "options": {**_object({
        "k": {**DEMO_COUNT, "minimum": 1},
        "max_bootstrapped_demos": DEMO_COUNT,
        "max_labeled_demos": DEMO_COUNT,
        "max_rounds": {"type": "integer", "minimum": 1, "maximum": 10},
        "max_errors": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET},
        "metric_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "num_candidate_programs": {"type": "integer", "minimum": 1, "maximum": 64},
        "num_threads": {"type": "integer", "minimum": 1, "maximum": 32},
        "stop_at_score": {"type": "number", "minimum": 0, "maximum": 100},
        "auto": {"enum": ["light", "medium", "heavy", None]},
        "num_candidates": {"type": "integer", "minimum": 1, "maximum": 64},
        "num_trials": {"type": "integer", "minimum": 1, "maximum": 500},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "init_temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "minibatch": {"type": "boolean"},
        "minibatch_size": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET},
        "breadth": {"type": "integer", "minimum": 2, "maximum": 64},
        "depth": {"type": "integer", "minimum": 1, "maximum": 20},
        "bsize": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET},
        "max_steps": {"type": "integer", "minimum": 1, "maximum": 100},
        "max_demos": DEMO_COUNT,
        "max_metric_calls": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "max_full_evals": {"type": "integer", "minimum": 1, "maximum": 1000},
        "reflection_lm": {**CONFIGURE_LM, "description": "GEPA's reflection LM, as configure_lm's args"},
        "reflection_minibatch_size": {"type": "integer", "minimum": 1, "maximum": MAX_TRAINSET},
        "candidate_selection_strategy": {"enum": ["pareto", "current_best"]},
        "component_selector": {"enum": ["round_robin", "all"],
                               "description": "GEPA: which predictors one reflection rewrites, in turn (default) "
                                              "or all at once (programs with several predictors: pipelines)"},
        "use_merge": {"type": "boolean"},
    }), "default": {}, "description": "per optimizer: see describe's backends.dspy.optimizers.*.options"},
    "save_as": {**PROGRAM_ID, "description": "keep the original and save the optimised program under this id"},
    "replace": {**REPLACE, "description": "with save_as: replace an existing program of that id"},
}, ["program_id", "optimizer", "trainset"])

LM_USAGE = _object({"reset": {"type": "boolean", "default": False,
                              "description": "zero the scope's counters after reading them"}})
