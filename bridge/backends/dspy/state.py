"""What the DSPy backend keeps per scope (a session, or the global scope).

Each scope holds its programs (bounded), its own LM configuration (a session
without one uses the global LM), its embedder and retrieval indexes (bounded
in count per scope and in bytes per worker) and the token usage of the calls
it ran.
The global scope is shared by concurrent requests, and a session may still
run a timed-out call while its next one starts, so every change is made
under the scope's lock. Nothing here imports DSPy.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable

from ...errors import not_found, overloaded, validation_error
from . import spec
from .catalog import PIPELINE
from .spec import summary

MAX_PROGRAMS = 256  # per scope
MAX_INDEXES = 8  # per scope
STORE = "dspy"  # this backend's key in a scope's store (ctx.store, ctx.global_store)


@dataclass
class Program:
    program_id: str
    module_name: str
    spec: dict
    module: object  # the dspy.Module
    created_at: float = field(default_factory=time.time)
    optimizations: list = field(default_factory=list)  # what optimize_program did to it, oldest first
    options: dict = field(default_factory=dict)  # how it was declared beside its signature (adapter...)
    # Looked up once instead of on every call: the module's structure never changes after it is
    # built (optimisers make a new Program), and a pydantic TypeAdapter costs more than the lookup.
    _predictors: list | None = field(default=None, repr=False, compare=False)
    converters: dict = field(default_factory=dict, repr=False, compare=False)  # input -> TypeAdapter | None
    _demo_fields: Callable[[str], dict] | None = field(default=None, repr=False, compare=False)  # demo_fields_of

    def predictors(self) -> list:
        if self._predictors is None:
            self._predictors = list(self.module.named_predictors())
        return self._predictors

    @property
    def signature(self):
        """The signature whose inputs a caller supplies: a pipeline's own, else its first predictor's."""
        if self.module_name == PIPELINE:
            return self.module.pipeline_signature
        return self.predictors()[0][1].signature

    @property
    def adapter(self) -> str:
        return self.options.get("adapter", "chat")

    def input_spec(self) -> dict:
        """The spec whose inputs a caller supplies: a retrieving program fills its context input itself."""
        pipeline = self.options.get("retrieve")
        if not pipeline:
            return self.spec
        return {**self.spec, "inputs": {k: v for k, v in self.spec["inputs"].items() if k != pipeline["context"]}}

    def demo_count(self) -> int:
        return sum(len(p.demos) for _, p in self.predictors())

    # -- how a request's values reach the module and come back -----------------------------
    # A program of an exposed dspy.Module class (exposed.ExposedProgram) answers these from the
    # class's hints instead of a signature. The after-gate modules are imported where they are
    # used: this module is imported when the backend registers, before DSPy.

    def check_inputs(self, inputs: dict, path: str = "args.inputs") -> None:
        """Missing, unknown or mistyped inputs are validation errors (before any LM call)."""
        spec.check_inputs(self.input_spec(), inputs, path)

    def python_inputs(self, inputs: dict) -> dict:
        """Checked JSON inputs -> the values the module is called with."""
        from .build import python_inputs

        return python_inputs(self, inputs)

    def check_labels(self, outputs: dict, path: str) -> None:
        """Labelled outputs of a trainset or devset example: unknown or mistyped ones are refused."""
        from .build import output_fields

        spec.check_outputs(output_fields(self.module_name, self.spec, self.options), outputs, path)

    def check_demo(self, demo, predictor: str, path: str) -> None:
        """A demo of one of its predictors (an import's), checked against what that predictor holds."""
        from .programs import check_demo, demo_fields_of

        if self._demo_fields is None:  # a pipeline's declaration read once, not for every demo
            self._demo_fields = demo_fields_of(self)
        check_demo(demo, self._demo_fields(predictor), path)

    def input_names(self) -> list[str]:
        return list(self.spec["inputs"])

    def output_names(self) -> list[str] | None:
        """The outputs a named metric compares (None: whichever the examples label)."""
        return list(self.spec["outputs"])

    def outputs_of(self, prediction) -> dict:
        """What the module returned, as the result's ``outputs``."""
        from .inrequest import json_fields

        return json_fields(prediction)

    def context_for(self, ctx):
        """The request context code inside the module sees (``bridge.sdk``'s, for exposed classes)."""
        return ctx

    def derive(self, program_id: str, module, optimizations: list) -> Program:
        """The same program with another module (optimised), under ``program_id``."""
        return replace(self, program_id=program_id, module=module, optimizations=optimizations,
                       options=dict(self.options), created_at=time.time(), _predictors=None, converters={})

    def describe(self) -> dict:
        doc = {
            "program_id": self.program_id,
            "module": self.module_name,
            **self.options,
            "signature": self.spec,
            "summary": summary(self.spec),
            "demos": self.demo_count(),
            "created_at": round(self.created_at, 3),
            "optimizations": list(self.optimizations),
        }
        if self.module_name == PIPELINE:
            doc["predictors"] = [name for name, _ in self.predictors()]
        return doc


@dataclass
class LMConfig:
    """One configured LM: the DSPy object, and the settings that are safe to show."""

    model: str
    lm: object
    settings: dict  # never the API key
    timeout_s: float | None
    local: bool  # runs in the worker (offline, scripted): no client timeout to adjust
    variants: dict = field(default_factory=dict)  # LM timeout (s) -> LM copy, for request deadlines
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> dict:
        return {"model": self.model, **self.settings}


class ByteBudget:
    """Bytes held by every index of the worker, across scopes: reserved before an index is kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            if self.used + nbytes > self.limit:
                raise overloaded("index_memory_full", f"the worker's indexes already hold {self.used} bytes; "
                                 f"{nbytes} more would pass the limit of {self.limit}: delete indexes or end "
                                 "sessions", used=self.used, requested=nbytes, limit=self.limit)
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - nbytes)


MEMORY = ByteBudget(256 * 1024 * 1024)


class Scope:
    def __init__(self) -> None:
        self.programs: dict[str, Program] = {}
        self.lm: LMConfig | None = None
        self.embedder = None  # retrieval.EmbedderConfig
        self.indexes: dict = {}  # index_id -> retrieval.Index
        self.usage: dict[str, dict] = {}  # model -> summed counters (tokens, lm_calls)
        self.lock = threading.Lock()

    # -- programs ---------------------------------------------------------------------

    def get(self, program_id: str) -> Program:
        program = self.programs.get(program_id)
        if program is None:
            raise not_found("unknown_program", f"no program {program_id!r} in this scope; list_programs shows "
                            "them (programs live in the session that created them)", program_id=program_id)
        return program

    def new_id(self) -> str:
        while True:
            candidate = f"prog_{uuid.uuid4().hex[:12]}"
            if candidate not in self.programs:
                return candidate

    def put(self, program: Program, replace: bool = False) -> None:
        with self.lock:
            if program.program_id in self.programs and not replace:
                raise validation_error("program_exists", f"a program {program.program_id!r} already exists in this "
                                       "scope; delete it first or pass replace: true",
                                       program_id=program.program_id)
            if program.program_id not in self.programs and len(self.programs) >= MAX_PROGRAMS:
                raise overloaded("too_many_programs", f"this scope already holds {MAX_PROGRAMS} programs; "
                                 "delete some with delete_program", max_programs=MAX_PROGRAMS)
            self.programs[program.program_id] = program

    def delete(self, program_id: str) -> Program:
        with self.lock:
            program = self.get(program_id)
            del self.programs[program_id]
            return program

    def listing(self) -> list[dict]:
        with self.lock:
            programs = list(self.programs.values())
        return [p.describe() for p in programs]

    # -- indexes ----------------------------------------------------------------------

    def get_index(self, index_id: str):
        index = self.indexes.get(index_id)
        if index is None:
            raise not_found("unknown_index", f"no index {index_id!r} in this scope (or the global one); "
                            "create_index builds one, list_indexes shows them", index_id=index_id)
        return index

    def put_index(self, index, replace: bool = False) -> None:
        """Keep ``index`` (its ``nbytes`` reserved in the worker's budget), or refuse it."""
        with self.lock:
            old = self.indexes.get(index.index_id)
            if old is not None and not replace:
                raise index_exists(index.index_id)
            if old is None and len(self.indexes) >= MAX_INDEXES:
                raise overloaded("too_many_indexes", f"this scope already holds {MAX_INDEXES} indexes; delete "
                                 "some with delete_index", max_indexes=MAX_INDEXES)
            MEMORY.reserve(index.nbytes)
            self.indexes[index.index_id] = index
            if old is not None:
                MEMORY.release(old.nbytes)

    def delete_index(self, index_id: str):
        with self.lock:
            index = self.get_index(index_id)
            del self.indexes[index_id]
        MEMORY.release(index.nbytes)
        return index

    def clear(self) -> None:
        """Forget everything (the session ended): programs, LM, embedder, indexes."""
        with self.lock:
            self.programs.clear()
            self.lm = self.embedder = None
            indexes, self.indexes = self.indexes, {}
        for index in indexes.values():
            MEMORY.release(index.nbytes)

    # -- usage ------------------------------------------------------------------------

    def add_usage(self, usage: dict) -> None:
        """Add one request's usage: ``{model: {counter: n}}``, numbers only; ``cost_usd`` stays null
        until a priced call adds to it."""
        with self.lock:
            for model, counters in usage.items():
                into = self.usage.setdefault(model, {})
                for key, value in counters.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        into[key] = (into.get(key) or 0) + value
                into.setdefault("cost_usd", None)

    def usage_report(self, reset: bool = False) -> dict:
        with self.lock:
            report = {model: dict(counters) for model, counters in self.usage.items()}
            if reset:
                self.usage.clear()
            return report


def index_exists(index_id: str):
    return validation_error("index_exists", f"an index {index_id!r} already exists in this scope; delete it first "
                            "or pass replace: true", index_id=index_id)


def scope_of(store: dict) -> Scope:
    """This backend's state in a scope's store (``ctx.store``, ``ctx.global_store``), made on first use."""
    scope = store.get(STORE)
    if scope is None:
        scope = store.setdefault(STORE, Scope())  # one atomic step: two first requests share one Scope
    return scope
