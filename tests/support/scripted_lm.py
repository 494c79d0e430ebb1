"""A test backend that gives a session DSPy's scripted ``DummyLM`` (load with ``--backend-module``).

``script_lm {"answers": [{field: value}, ...]}`` makes the session's LM a
``dspy.utils.DummyLM`` that returns those answers in order (or, with
``"by_text": true``, a map from a substring of the last message to answers).
It goes through the DSPy backend's own gate and session store, so the rest of
the worker (validation, execution, optimisers, error mapping) runs unchanged:
only the model is scripted.
"""

from __future__ import annotations

from bridge.backends import Backend
from bridge.backends.dspy import backend as dspy_backend
from bridge.backends.dspy.state import LMConfig, scope_of


def script_lm(ctx, args):
    dspy_backend.gate.require()
    from dspy.utils import DummyLM

    scope = scope_of(ctx.store)
    lm = DummyLM(args["answers"], follow_examples=args.get("follow_examples", False))
    with scope.lock:
        scope.lm = LMConfig("dummy", lm, {"scripted": True}, None, True)
    return {"scripted": len(args["answers"])}


class Scripted(Backend):
    name = "scripted"

    def register(self, registry) -> None:
        registry.command("script_lm", backend=self.name, schema={
            "type": "object",
            "properties": {
                "answers": {"anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]},
                "follow_examples": {"type": "boolean"},
            },
            "required": ["answers"],
            "additionalProperties": False,
        })(script_lm)


backend = Scripted()
