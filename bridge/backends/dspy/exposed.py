"""Programs of the operator's own ``dspy.Module`` classes (``bridge.sdk``'s ``@program``), after the gate.

    create_program {"module": "myprogs.MultiHop", "init": {"hops": 2}, "program_id": "mh"}

builds ``MultiHop(hops=2)`` when the worker exposes ``myprogs`` (the class is
looked up in ``bridge.sdk.programs.PROGRAMS``, never imported: a name nobody
exposed is ``not_found``). ``init`` is JSON checked against the schema of
``__init__``'s hints, never evaluated. The program is then like any other:
its inputs are checked against ``forward``'s hints, its predictors are the
module's own (``named_predictors``), which optimisers tune and exports carry:

    {"format": "portbridge.dspy.program", "version": 1, "program_id": "mh",
     "module": "myprogs.MultiHop", "options": {"adapter": "chat", "init": {"hops": 2}},
     "state": {"predictors": {"hop.predict": {"instructions": "...", "demos": [...]}}},
     "optimizations": [...], "exported_by": {...}}

Importing one builds the module again from ``init`` and loads each
predictor's instructions and demos, after checking that the predictors are
the ones the class makes. A demo may carry fields its predictor does not
have (LabeledFewShot gives every predictor the whole labelled example; DSPy
formats a demo's own fields only), so its keys are only checked to be field
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import BridgeError, validation_error
from ...sdk.programs import PROGRAMS, ProgramClass
from ...wire import to_wire
from . import programs
from .programs import AUGMENTED
from .catalog import ADAPTERS
from .fieldtypes import NAME
from .inrequest import json_fields
from .spec import MAX_FIELDS
from .state import Program

DOC_KEYS = programs.DOC_KEYS - {"signature"}  # programs.export's document: an exposed class has no signature
CREATE_KEYS = {"module", "init", "adapter", "program_id", "replace"}


@dataclass
class ExposedProgram(Program):
    source: ProgramClass | None = None  # the exposed class it was built from

    @property
    def signature(self):
        raise AttributeError("a program of an exposed class has no signature of its own")

    def check_inputs(self, inputs: dict, path: str = "args.inputs") -> None:
        self.source.check_inputs(inputs, path)

    def python_inputs(self, inputs: dict) -> dict:
        return self.source.python_inputs(inputs)

    def check_labels(self, outputs: dict, path: str) -> None:
        self.source.check_outputs(outputs, path)
        _check_names(outputs, path)  # they become demo fields (LabeledFewShot, bootstrapped traces)

    def check_demo(self, demo, predictor: str, path: str) -> None:
        if not isinstance(demo, dict) or not demo:
            raise validation_error("bad_demo", f"{path}: a demo is a non-empty map of field -> value", path=path)
        _check_names(demo, path)
        if not isinstance(demo.get(AUGMENTED, False), bool):
            raise validation_error("bad_demo", f"{path}.{AUGMENTED}: true or false", path=f"{path}.{AUGMENTED}")

    def input_names(self) -> list[str]:
        return list(self.source.inputs.schema["properties"])

    def output_names(self) -> list[str] | None:
        return self.source.output_names()

    def outputs_of(self, prediction) -> dict:
        if hasattr(prediction, "items") or isinstance(prediction, Mapping):
            return json_fields(prediction)
        if hasattr(prediction, "__dataclass_fields__"):
            return to_wire(prediction)
        raise BridgeError("execution", "bad_forward_result", f"{self.module_name}.forward returned a "
                          f"{type(prediction).__name__}; return a dspy.Prediction (or a map) of the outputs",
                          {"module": self.module_name})

    def context_for(self, ctx):
        scoped = getattr(ctx, "scoped", None)  # a test's own context may have none
        return scoped(self.source.namespace) if scoped is not None else ctx

    def describe(self) -> dict:
        return {
            "program_id": self.program_id,
            "module": self.module_name,
            **self.options,
            "description": self.source.description,
            "inputs": self.source.inputs.schema,
            "outputs": self.source.outputs,
            "predictors": [name for name, _ in self.predictors()],
            "demos": self.demo_count(),
            "created_at": round(self.created_at, 3),
            "optimizations": list(self.optimizations),
        }


def create(args: dict, program_id: str, path: str = "args") -> ExposedProgram:
    """A program from ``create_program``'s arguments (``module`` names an exposed class)."""
    wrong = sorted(set(args) - CREATE_KEYS)
    if wrong:
        raise validation_error("option_not_applicable", f"{path}: {wrong} do not apply to {args['module']}, a "
                               "dspy.Module class of the worker's own (it takes init and adapter)", path=path,
                               options=wrong)
    return build(PROGRAMS.get(args["module"]), program_id, args.get("init") or {},
                 args.get("adapter", "chat"), f"{path}.init")


def build(source: ProgramClass, program_id: str, init: dict, adapter: str, path: str) -> ExposedProgram:
    module = source.instantiate(init, path)
    if not list(module.named_predictors()):
        raise validation_error("no_predictors", f"{source.name} has no predictors: nothing DSPy could run or "
                               "tune", module=source.name)
    return ExposedProgram(program_id, source.name, None, module, options={"adapter": adapter, "init": init},
                          source=source)


def load(dspy, doc: dict, program_id: str) -> ExposedProgram:
    """Rebuild a program of an exposed class from its export document (``validation`` when it does not fit)."""
    path = "args.program"
    programs.check_document(doc, DOC_KEYS, path)
    source = PROGRAMS.get(doc["module"])
    options = doc.get("options")
    if not isinstance(options, dict) or set(options) - {"adapter", "init"} or \
            options.get("adapter", "chat") not in ADAPTERS or not isinstance(options.get("init", {}), dict):
        raise validation_error("bad_program_document", f"{path}.options: {{adapter: one of {sorted(ADAPTERS)}, "
                               "init: a map}", path=f"{path}.options")
    program = build(source, program_id, options.get("init", {}), options.get("adapter", "chat"),
                    f"{path}.options.init")
    programs.load_state(dspy, program, doc.get("state"), f"{path}.state")
    programs.load_history(program, doc, path)
    return program


def _check_names(fields: dict, path: str) -> None:
    """A demo's (or a label's) keys: field names, at most twice MAX_FIELDS (DSPy adds its own)."""
    wrong = sorted(k for k in fields if not NAME.match(k))[:5]
    if wrong or len(fields) > 2 * MAX_FIELDS:
        raise validation_error("bad_demo", f"{path}: {wrong or len(fields)}: fields are names ({NAME.pattern}), "
                               f"at most {2 * MAX_FIELDS} of them", path=path)

