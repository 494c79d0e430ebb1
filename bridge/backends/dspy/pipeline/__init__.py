"""Pipelines as data: several modules composed in ``create_program``, run as one ``dspy.Module``.

    {"module": "Pipeline", "signature": "question -> answer",
     "steps": [
       {"name": "hop", "repeat": 2, "collect": {"context": "search.passages"}, "steps": [
         {"name": "generate_query", "module": "ChainOfThought", "signature": "context, question -> query",
          "inputs": {"context": "hop.context"}},
         {"name": "search", "retrieve": {"index_id": "kb", "query": "generate_query.query", "k": 3}}]},
       {"name": "generate_answer", "module": "ChainOfThought", "signature": "context, question -> answer",
        "inputs": {"context": "hop.context"}}]}

is the module a user would write with ``self.generate_query`` and
``self.generate_answer`` and a loop of two hops: same predictors (named
``generate_query.predict`` and ``generate_answer.predict``), same LM requests.

* ``declaration``  checks a declaration (before anything is built or sent),
  gives its canonical options and its ``plan``;
* ``plan``         the plain data a run walks, and references;
* ``module``       the ``dspy.Module`` that runs it.

A pipeline program keeps ``{"adapter", "steps", "outputs"}`` as its options;
everything else (export, import, optimisation, streaming) treats it as any
program whose predictors are those of its steps. Imported after the gate.
"""

from __future__ import annotations

from ....errors import validation_error
from .. import build
from ..catalog import ADAPTERS
from .declaration import TOP_LEVEL, Declaration, declare
from .module import Pipeline

__all__ = ["Pipeline", "declare", "create", "check_document", "demo_fields"]


def create(dspy, pipeline_spec: dict, options: dict) -> Pipeline:
    """A fresh pipeline module from (canonical) options: its steps' modules, unoptimised."""
    declaration = declare(options, pipeline_spec)
    return built(dspy, declaration, build.signature(dspy, pipeline_spec))


def built(dspy, declaration: Declaration, pipeline_signature) -> Pipeline:
    modules = [(name, build.module(dspy, module_name, signature, options))
               for name, module_name, signature, options in declaration.modules]
    return Pipeline(pipeline_signature, declaration.plan, modules)


def check_document(options, pipeline_spec: dict, path: str) -> dict:
    """A Pipeline program's options from an export document, checked as ``create_program`` checks them."""
    if not isinstance(options, dict) or set(options) - set(TOP_LEVEL):
        raise validation_error("bad_program_document", f"{path}: a Pipeline's options are {list(TOP_LEVEL)}",
                               path=path)
    if options.get("adapter", "chat") not in ADAPTERS:
        raise validation_error("bad_program_document", f"{path}.adapter: one of {sorted(ADAPTERS)}",
                               path=f"{path}.adapter")
    return declare(options, pipeline_spec, path).options


def demo_fields(options: dict, pipeline_spec: dict):
    """``fields(predictor name) -> {field: [types]}``: what a demo of each predictor may carry.

    A demo holds the step's fields (an input bound to another step's output may
    hold that output's type) or, from a labelled example, the pipeline's own.
    """
    fields = declare(options, pipeline_spec).fields
    return lambda predictor: fields[predictor.split(".", 1)[0]]
