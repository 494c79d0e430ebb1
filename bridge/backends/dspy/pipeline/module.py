"""The ``dspy.Module`` a pipeline runs as: what a user would write by hand, driven by its plan.

Each module step is an attribute named after the step, set in step order, so
DSPy names its predictors as it would in the equivalent hand-written module
(a step ``hop1`` holding a ChainOfThought is ``hop1.predict``), and every
optimiser, ``dump_state`` and streaming listener sees them. ``forward`` walks
the plan: each step is called with its inputs read from the values so far,
exactly as a hand-written ``forward`` calls ``self.hop1(...)``; a group runs
its steps ``repeat`` times with the same module objects and, after each
repetition, a new list for each collected name (the old one stays as the
demos and traces of earlier repetitions saw it). Imported after the gate.
"""

from __future__ import annotations

import dspy

from ....errors import BridgeError
from ..inrequest import INDEXES, STEP_TRACE, json_fields
from .plan import INPUTS, Group, ModuleStep, Plan, RetrieveStep


class Pipeline(dspy.Module):
    """Steps declared as data, run in order (the plan), each module step an attribute of its own name."""

    def __init__(self, signature, plan: Plan, modules: list) -> None:
        super().__init__()
        self.pipeline_signature = signature  # the pipeline's own inputs and outputs (not a predictor's)
        self.plan = plan
        for name, module in modules:
            setattr(self, name, module)

    def forward(self, **inputs):
        trace = dspy.settings.get(STEP_TRACE)
        env: dict = {INPUTS: inputs}
        for item in self.plan.items:
            if type(item) is Group:
                self._repeat(item, env, trace)
            else:
                self._step(item, env, trace, None)
        return dspy.Prediction(**{name: env[ref.source][ref.key] for name, ref in self.plan.outputs})

    def _repeat(self, group: Group, env: dict, trace) -> None:
        collected: dict = {name: [] for name, _ in group.collect}
        for iteration in range(group.repeat):
            env[group.name] = collected  # inside the group: what was collected so far
            for step in group.steps:
                self._step(step, env, trace, iteration)
            collected = {name: collected[name] + _as_list(env[ref.source][ref.key]) for name, ref in group.collect}
        env[group.name] = collected

    def _step(self, step, env: dict, trace, iteration: int | None) -> None:
        if type(step) is ModuleStep:
            kwargs = {field: env[ref.source][ref.key] for field, ref in step.inputs}
            outputs = getattr(self, step.name)(**kwargs)
        else:
            query = env[step.query.source][step.query.key]
            kwargs = {"query": query}
            outputs = {"passages": _search(step, query)}
        env[step.name] = outputs
        if trace is not None:
            entry = {"step": step.name, "inputs": json_fields(kwargs), "outputs": json_fields(outputs)}
            if iteration is not None:
                entry["iteration"] = iteration
            trace.append(entry)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _search(step: RetrieveStep, query) -> list:
    find = dspy.settings.get(INDEXES)
    if find is None:
        raise BridgeError("execution", "no_index_lookup", "this pipeline retrieves; it runs only in a request")
    return find(step.index_id).search(str(query), step.k).passages
