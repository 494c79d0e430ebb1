"""A checked pipeline as the few tuples its run walks: steps, groups, and where each value comes from.

A reference names a value: ``"question"`` (a pipeline input) or
``"hop1.search_query"`` (an output of an earlier step, or a list a group
collects). At run time every value lives in one map per source: the pipeline
inputs under ``INPUTS``, a step's prediction (or ``{"passages": [...]}``)
under its name, a group's collected lists under the group's name; so a
reference is the pair ``(source, key)`` and reading it is ``env[source][key]``.
Nothing here holds a DSPy object: a plan is plain data, copied with the
program and never seen by DSPy's walk over a module's predictors.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUTS = ""  # the source of pipeline inputs in a run's map (no step has an empty name)


@dataclass(frozen=True)
class Ref:
    source: str  # INPUTS, a step's name, or a group's name
    key: str  # the input's name, or the step's output field, or the group's collected name

    def text(self) -> str:
        return self.key if self.source == INPUTS else f"{self.source}.{self.key}"


def parse_ref(text: str) -> Ref | None:
    """``"question"`` or ``"step.field"`` -> a Ref, or None for anything else."""
    if not isinstance(text, str):
        return None
    source, dot, key = text.partition(".")
    if not dot:
        return Ref(INPUTS, text) if text else None
    if not source or not key or "." in key:
        return None
    return Ref(source, key)


@dataclass(frozen=True)
class ModuleStep:
    name: str  # also the attribute holding its module on the pipeline (predictors: "<name>.predict")
    inputs: tuple  # ((field, Ref), ...) in the step signature's order


@dataclass(frozen=True)
class RetrieveStep:
    name: str
    index_id: str
    query: Ref
    k: int | None  # None: the index's own k


@dataclass(frozen=True)
class Group:
    name: str
    repeat: int
    steps: tuple  # ModuleStep | RetrieveStep, run in order on every repetition
    collect: tuple  # ((collected name, Ref to a step of the group), ...)


@dataclass(frozen=True)
class Plan:
    items: tuple  # ModuleStep | RetrieveStep | Group, in order
    outputs: tuple  # ((pipeline output, Ref), ...)
