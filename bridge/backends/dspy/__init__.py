"""The DSPy backend: programs from data, session-scoped LMs, streaming, optimisation, export/import.

Loaded through the ``portbridge.backends`` entry point ``dspy``. ``register``
only registers commands and the error classifier (no DSPy import: the worker
is already answering ``ping``); ``start`` begins importing DSPy on a
background thread, and every DSPy command waits for that one gate.

Modules of this package, in the order a request meets them:

* ``loader``     the import gate and the environment DSPy needs
* ``schemas``    argument schemas (what ``describe`` shows)
* ``commands``   the handlers
* ``spec``, ``fieldtypes``  signatures and field types from data, input checks
* ``catalog``    buildable modules, optimisers, limits as data
* ``typesyntax``  annotation text (``list[int]``, ``Literal['a']``) -> map-form types, never evaluated
* ``build``      specs -> DSPy signatures and modules
* ``state``      per-scope programs, LM and usage
* ``lms``        LMs from ``configure_lm``; which LM, timeout and per-call options a call gets
* ``metering``   each LM call priced, reported (lm_call) and, with a rate limit, admitted
* ``scripted``   the scripted LM (answers given as data)
* ``running``, ``streaming``, ``splitters``  one program call, plain or as chunk events (field text only)
* ``optimize``, ``metrics``   LabeledFewShot / BootstrapFewShot, named metrics
* ``programs``   export and import documents
* ``dspy_state``  DSPy's own saved state (``module.save`` JSON) loaded into an existing program
* ``exposed``    programs of the operator's own dspy.Module classes (bridge.sdk @program)
* ``retrieval``, ``offline_embed``  embedders, indexes, retrieve -> generate programs
* ``offline``, ``offline_model``, ``offline_values``  the built-in deterministic LM
* ``classify``   DSPy exceptions -> error categories
* ``inrequest``  what code inside a run shares with its request (settings keys, Interrupted, JSON values)
* ``patches``    the two changes made to DSPy itself (a metadata cache, providers' messages)
"""

from __future__ import annotations

from .. import Backend
from ...sdk.programs import PROGRAMS
from . import catalog, classify, commands, metrics, schemas, spec
from .loader import GATE
from .state import MAX_INDEXES, MAX_PROGRAMS, MEMORY, STORE


class DSPyBackend(Backend):
    name = "dspy"

    def __init__(self) -> None:
        self.gate = GATE

    def register(self, registry) -> None:
        commands.register(registry)
        registry.classifier(classify.classify)
        # Modules exposed with @program classes register after this backend: a create_program that
        # arrives while they still import waits for them rather than finding nothing.
        PROGRAMS.settled = registry.complete

    def start(self) -> None:
        self.gate.start()

    def status(self) -> dict:
        return self.gate.status()

    def describe(self) -> dict:
        return {
            **self.status(),
            "modules": catalog.MODULES,
            "adapters": catalog.ADAPTERS,
            "not_buildable": catalog.NOT_BUILDABLE,
            "exposed_programs": PROGRAMS.describe(),
            "optimizers": catalog.OPTIMIZERS,
            "metrics": metrics.describe(),
            "field_types": ["str", "int", "float", "bool", "list[T]", "dict[str, T]", "optional[T]",
                            "Literal['a', 1]", {"literal": ["..."]}, {"object": {"field": {"type": "T", "desc": "..."}}, "name": "..."},
                            {"history": "inputs only: dspy.History, {\"messages\": [{field: value}, ...]}, earlier "
                                        "turns of the conversation"},
                            {"image": "inputs only: dspy.Image, {\"url\": \"https://...\"} or a data:image/...;"
                                      "base64 URL; never a local path"}],
            "lm": {
                "models": "any DSPy model string (provider/model); 'offline': a built-in deterministic LM that "
                          "fills each output with a type-valid value derived from the prompt, in the format of "
                          "the program's adapter (chat, json, xml, two_step), and repeats a demo's outputs for "
                          "that demo's inputs; or 'scripted': answers given as data, for "
                          "tests. The built-in ones are used only when configured. Providers DSPy's own client "
                          "does not serve go through litellm, whose first use costs seconds",
                "scripted": "configure_lm {model: 'scripted', answers: [{output field: value}, ...]} (at most "
                            f"{catalog.MAX_SCRIPTED_ANSWERS}): each LM call of the scope takes the next answer, "
                            "written in the calling adapter's format (chat, json, xml) as DSPy's DummyLM writes it; "
                            "a field it lacks fails parsing as a real model's answer would (ChainOfThought wants "
                            "'reasoning'); when none is left the call fails with "
                            "execution/scripted_answers_exhausted. Never cached",
                "rate_limit": "configure_lm rate_limit {requests_per_minute, tokens_per_minute, burst}: before "
                              "every HTTP attempt the worker asks the client with the portbridge.admit callback "
                              "({model, limits, estimated_tokens}; answer {admitted: true}, maybe with a lease "
                              "of the next calls' starts), reports failed attempts (and, with tokens_per_minute, "
                              "every call) as lm_call events, and retries failed attempts itself (DSPy's retries "
                              "are off) up to num_retries, after the provider's Retry-After, within the deadline",
                "per_call": "execute_program lm {temperature, max_tokens, top_p, stop, n, rollout_id}: for that "
                            "run's LM calls only, as DSPy's per-call config",
                "cost": "every usage entry has cost_usd: DSPy's price of each call, summed; null when DSPy has "
                        "no price for the model. lm_call events (notify: ['lm_call']) carry each call's tokens, "
                        "cost, duration, cache hit and program",
                "scopes": "configure_lm with session_id sets that session's LM; without, the global LM, which "
                          "sessions without their own use",
                "cache": "off unless configure_lm sets cache: true",
                "timeouts": "a request's timeout_ms bounds its LM calls (rounded up to 0.5, 1, 2, 5, 10, 20, 30, "
                            "60, 120, 300 or 600 s)",
            },
            "streaming": "execute_program with stream: true sends chunk events {field, text, predictor, last} "
                         "before the final outputs: field text only, each field's last chunk with last: true "
                         "(a cached answer arrives without chunks)",
            "pipeline": {**catalog.PIPELINES, "steps": {"module": schemas.MODULE_STEP,
                                                        "retrieve": schemas.RETRIEVE_STEP, "group": schemas.GROUP},
                         "limits": {"max_steps": schemas.MAX_STEPS, "max_repeat": schemas.MAX_REPEAT}},
            "callbacks": catalog.CALLBACKS,
            "retrieval": {**catalog.RETRIEVAL, "index_bytes_in_use": MEMORY.used},
            "differences": catalog.DIFFERENCES,
            "limits": {
                **spec.LIMITS,
                "max_programs_per_scope": MAX_PROGRAMS,
                "max_trainset": catalog.MAX_TRAINSET,
                "max_scripted_answers": catalog.MAX_SCRIPTED_ANSWERS,
                "max_demos_per_predictor": catalog.MAX_DEMOS,
                "max_corpus_passages": catalog.MAX_CORPUS,
                "max_passage_chars": catalog.MAX_PASSAGE_CHARS,
                "max_embedding_dimensions": catalog.MAX_DIMS,
                "max_index_bytes": catalog.MAX_INDEX_BYTES,
                "max_indexes_per_scope": MAX_INDEXES,
                "max_index_bytes_per_worker": MEMORY.limit,
                "max_k": catalog.MAX_K,
            },
        }

    def close_session(self, session, reason: str) -> None:
        scope = session.store.get(STORE)
        if scope is not None:
            scope.clear()


backend = DSPyBackend()
