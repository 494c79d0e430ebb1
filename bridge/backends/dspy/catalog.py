"""What the DSPy backend can build and run, as plain data (for schemas and ``describe``).

Only modules fully described by data (a signature and nothing else) can be
built; ``NOT_BUILDABLE`` says why each other DSPy module is left out.
"""

from __future__ import annotations

MODULES = {
    "Predict": "one LM call from the inputs to the outputs",
    "ChainOfThought": "like Predict, with a 'reasoning' output the LM writes before the answer",
    "ReAct": "an agent: the LM picks one of the declared tools (tools: [{name, description, parameters: JSON "
             "Schema}]) and its arguments, the client runs it (a callback event), up to max_iters turns, then "
             "the outputs are extracted; the outputs carry its trajectory",
    "BestOfN": "runs base_module (Predict, ChainOfThought or ReAct) up to N times at temperature 1 and keeps "
               "the prediction the client's reward (reward_fn: {callback: name}) scores highest, stopping at "
               "threshold",
    "Refine": "as BestOfN, and between attempts the LM writes advice from the reward for the next one",
    "Pipeline": "several modules composed as data (steps: module steps, retrieve steps, repeat groups), run in "
                "order with inputs bound by reference; predictors named as in the equivalent dspy.Module",
}
PIPELINE = "Pipeline"
BASE_MODULES = ("Predict", "ChainOfThought", "ReAct")  # what BestOfN and Refine wrap
WRAPPERS = ("BestOfN", "Refine")
NOT_BUILDABLE = {
    "MultiChainComparison": "needs earlier completions passed in at call time, not a signature alone",
    "ProgramOfThought": "runs LM-written code (needs Deno or an unsandboxed interpreter) and is deprecated",
    "CodeAct": "runs LM-written code",
}
BOOTSTRAP = ["max_bootstrapped_demos", "max_labeled_demos", "max_rounds", "max_errors", "metric_threshold"]
OPTIMIZERS = {
    "LabeledFewShot": {"description": "samples up to k labelled demos from the trainset; no LM calls",
                       "options": ["k"]},
    "BootstrapFewShot": {"description": "runs the program on the trainset and keeps the runs the metric accepts "
                                        "as demos, topped up with labelled ones; one LM call per example and round",
                         "options": BOOTSTRAP},
    "BootstrapFewShotWithRandomSearch": {
        "description": "BootstrapFewShot over several random candidate demo sets, keeping the best on the valset "
                       "(default: the trainset)",
        "options": [*BOOTSTRAP, "num_candidate_programs", "num_threads", "stop_at_score"]},
    "MIPROv2": {"description": "proposes instructions and bootstraps demos, then searches their combinations "
                               "with optuna; auto light/medium/heavy (default light), or auto: null with "
                               "num_candidates and num_trials. Without a valset it validates on 80% of the "
                               "trainset (at least 2 examples needed); with minibatch (auto: null's default), "
                               "minibatch_size (default 35) must not exceed that valset: checked before any LM call",
                "options": ["auto", "max_bootstrapped_demos", "max_labeled_demos", "num_candidates", "num_trials",
                            "num_threads", "max_errors", "seed", "init_temperature", "metric_threshold",
                            "minibatch", "minibatch_size"]},
    "COPRO": {"description": "coordinate ascent over instructions written by the LM (breadth candidates, "
                             "depth rounds)",
              "options": ["breadth", "depth", "init_temperature", "num_threads"]},
    "SIMBA": {"description": "stochastic mini-batch ascent: the LM writes advice and picks demos from the "
                             "hardest examples; bsize (default 32) must not exceed the trainset (checked before "
                             "any LM call)",
              "options": ["bsize", "num_candidates", "max_steps", "max_demos", "num_threads", "seed"]},
    "GEPA": {"description": "reflective prompt evolution: a reflection LM reads the metric's textual feedback "
                            "and rewrites instructions (budget: auto light/medium/heavy, max_metric_calls or "
                            "max_full_evals; reflection_lm configured as configure_lm, default: the scope's LM)",
             "options": ["auto", "max_metric_calls", "max_full_evals", "reflection_lm", "reflection_minibatch_size",
                         "candidate_selection_strategy", "component_selector", "use_merge", "num_threads", "seed"]},
}
ADAPTERS = {
    "chat": "DSPy's ChatAdapter: [[ ## field ## ]] sections (the default; falls back to JSON once when the "
            "answer does not parse, as in DSPy)",
    "json": "JSONAdapter: the LM answers one JSON object (structured outputs where the provider supports them)",
    "xml": "XMLAdapter: each output wrapped in <field> tags",
    "two_step": "TwoStepAdapter: the LM answers freely, then the same LM extracts the fields through "
                "ChatAdapter (two calls; for reasoning models; cannot stream)",
}
MAX_TRAINSET = 1000
MAX_DEMOS = 128  # per predictor, in optimiser options and imported documents
MAX_SCRIPTED_ANSWERS = 1000  # per configure_lm of the scripted model

# Retrieval: what one index, one scope and the worker may hold (state.MEMORY keeps the worker's bound).
MAX_CORPUS = 10_000
MAX_PASSAGE_CHARS = 10_000
MAX_DIMS = 4096
MAX_INDEX_BYTES = 32 * 1024 * 1024
MAX_K = 100
RETRIEVAL = {
    "embedders": "configure_embedder: any embedding model dspy.Embedder reaches through litellm "
                 "(provider/model, api_key, api_base, dimensions), or 'offline': a built-in deterministic "
                 "embedder (each word and word pair hashed into 'dimensions' signed buckets, unit length; no "
                 "network). A session without its own embedder uses the global one",
    "indexes": "create_index embeds a corpus (a list of passages) in batches of the embedder's batch_size and "
               "holds it in the scope as one float32 matrix; search is exact cosine similarity (dspy.retrievers."
               "Embeddings' arithmetic). An index keeps the embedder it was built with for its queries",
    "pipeline": "create_program with retrieve: {index_id, query, context, k}: the query input is searched, the "
                "passages fill the context input (str: DSPy's numbered list; list[str]: JSON), then the module "
                "runs; execute_program returns them as retrieved, and optimisers and evaluate_program run the "
                "whole pipeline. The index is looked up by id at each run",
    "rebuild": "an index is scope state built from data: on a fresh worker send configure_embedder and "
               "create_index again (the corpus is embedded again). PortBridge.DSPy on a pool records both and "
               "replays them on every fresh Python, before the programs that use them",
}

# create_program {"module": "Pipeline"}: several modules composed as data (bridge/backends/dspy/pipeline).
PIPELINES = {
    "declaration": "create_program with module: Pipeline, the pipeline's own signature (its inputs and outputs), "
                   "steps (run in order) and optionally outputs (pipeline output -> reference; default: the "
                   "same-named output of the last step that has one) and adapter (for every step)",
    "references": "a step's inputs map each of its input fields to a reference: a pipeline input ('question') or "
                  "an output of an earlier step ('hop1.search_query', 'search.passages'), or a group's collected "
                  "list ('hop.context'); a field left out reads the pipeline input of the same name. Values pass as "
                  "they are, as between the modules of a hand-written dspy.Module",
    "groups": "a group {name, repeat (1-10), steps, collect: {name: 'step.field'}} runs its steps repeat times; "
              "after each repetition every collected value is appended (lists flattened) to a new list, read as "
              "'<group>.<name>': inside the group what was collected so far, after it all of it. A step in a "
              "group is one module, reused on every repetition; after the group its outputs are the last "
              "repetition's",
    "predictors": "each module step is an attribute named after the step (names unique in the whole pipeline), so "
                  "predictors are named as in the equivalent dspy.Module: a Predict step 'classify' is 'classify', "
                  "a ChainOfThought step 'hop1' is 'hop1.predict', a ReAct step 'agent' is 'agent.react' and "
                  "'agent.extract.predict'; optimisers tune each one, export_program exports each one's state",
    "trace": "execute_program with trace: true adds trace: [{step, inputs, outputs}] in run order, a group's steps "
             "with iteration (from 0); retrieve steps show {query} -> {passages}",
    "streaming": "chunk events name the predictor of the step that writes (e.g. 'generate_answer.predict')",
    "errors": "a declaration is checked whole before it is kept: unknown steps or fields, forward references "
              "(cycles), duplicate names, more than 32 steps or a repeat over 10 are validation errors whose "
              "details.path names the place (args.steps[2].inputs.context)",
}

# What the worker calls back (callback events answered by the client's callback_result), and with what.
CALLBACKS = {
    "tools": "a ReAct program's tools (create_program tools: [{name, description, parameters}]): the callback is "
             "the tool's name, its args the tool's arguments (a JSON object valid for parameters, checked before "
             "the call), its result any JSON value: the observation (DSPy formats non-strings as JSON for the LM). "
             "Arguments that fail the schema, and an execution error from the client, become the observation "
             "'Execution error in <tool>: <message>' and the agent carries on; timeout, cancel and shutdown stop "
             "the run",
    "reward": "BestOfN and Refine (reward_fn: {callback: name}): args {inputs: {...}, prediction: {output: value}}, "
              "result a number",
    "metric": "evaluate_program and optimize_program (metric: {callback: name}): args {example: {inputs, outputs}, "
              "prediction: {output: value}}, result a number, a bool, or {score, feedback} (GEPA reads feedback)",
    "scope": "only names the request's program or metric declares are called, and only while that request runs",
}

# Where a program run through the worker deliberately behaves otherwise than the same program in
# plain DSPy 3.4 (what the LM is sent and what comes back are otherwise the same).
DIFFERENCES = {
    "inputs": "missing, unknown or mistyped inputs (also unknown keys inside object inputs) are validation "
              "errors before any LM call; DSPy logs a warning and calls the LM",
    "signatures": "a string signature is read as data ('question, context: list[str] -> answer: int', with "
                  "the map form's types: str, int, float, bool, list, dict[str, T], Optional[T] / T | None, "
                  "Literal[...], dspy.History, dspy.Image), never by DSPy's string parser, which imports modules "
                  "named in annotations; 'None | T' reads as Optional[T] (DSPy keeps Union[None, T], whose prompt "
                  "lists null first), and a Literal may hold negative numbers and '->' in a string (DSPy's parser "
                  "refuses both)",
    "cache": "DSPy's response cache is off unless configure_lm sets cache: true (it is process-wide and keyed "
             "without api_base or api_key)",
    "history": "no LM or module history is kept (DSPy keeps 10,000 entries per LM, module and process)",
    "streaming": "chunks carry field text only, for every adapter that streams (chat, json, xml): a field's "
                 "chunks join to exactly the value the adapter parses (a typed value: its text as the LM wrote "
                 "it) and each field ends with last: true; DSPy's StreamListener lets [[ ## field ## ]] markers, "
                 "JSON syntax and the next field into chunks when a server streams a few characters per event. A "
                 "two_step program cannot stream: a validation error before any LM request",
    "dspy_state": "import_program's dspy_state (DSPy's module.save JSON) must fit the program it is loaded into "
                  "(predictors, fields, descriptions, demo values); DSPy's load_state takes a mismatch silently. "
                  "An LM saved with a predictor is ignored (reported in dspy_state.ignored): the program runs on "
                  "its scope's LM",
    "usage": "lm_calls counts every LM call, also those whose response carries no usage; DSPy's tracker "
             "records only calls that reported tokens",
    "tools": "a failed tool call's observation is 'Execution error in <tool>: <message>', without the Python "
             "traceback DSPy appends (it would show the worker's files to the LM)",
    "retrieval": "DSPy's embedding cache is off (process-wide, keyed without api_base); an index searches "
                 "exactly (dspy.retrievers.Embeddings switches to FAISS above 20,000 passages, beyond this "
                 "worker's corpus limit) and without Embeddings' per-instance batching thread",
    "program_source": "MIPROv2's program-aware proposer and SIMBA's rules show the LM the Python source of the "
                      "program's class; for a Pipeline program that is the bridge's Pipeline module (its steps "
                      "visible through the predictors' signatures), not a hand-written module's code",
    "errors": "when a provider's error body has no OpenAI-style error.message (e.g. {\"detail\": \"Not Found\"}), "
              "its detail or text is the message; DSPy says only [provider/model]",
}
