"""A pipeline's declaration, checked: steps, bindings, outputs -> canonical options and a plan.

``declare`` checks what a client sends (``create_program`` args, or the
options of an export document) in two passes, before anything is built and
before any LM call:

1. every step is defined: its kind (module step, retrieve step, group), its
   own schema, a unique name that no ``dspy.Module`` attribute shadows, its
   signature and module options (as ``create_program`` checks them), and so
   the fields it produces; a group's ``collect`` must read its own steps;
2. every binding is resolved in run order: a reference must name a pipeline
   input, or a field that an earlier step (or the enclosing group's
   collection) produces. Naming a later step, or the step itself, is a
   forward reference (pipelines have no cycles by construction).

Every error is ``validation`` with ``details.path`` naming the place
(``args.steps[2].inputs.context``). The canonical options (defaults filled
in, every binding explicit) are what the program keeps and exports, and
checking them again gives the same result.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field

from .... import schema as json_schema
from ....errors import BridgeError, validation_error
from .. import build, fieldtypes, schemas, spec
from ..options import AGENT_KEYS, WRAPPER_KEYS, options_of
from .module import Pipeline
from .plan import INPUTS, Group, ModuleStep, Plan, Ref, RetrieveStep, parse_ref

TOP_LEVEL = ("steps", "outputs", "adapter")  # what a Pipeline program declares besides signature and id
PASSAGES = {"passages": "list[str]"}
INSTANCE_ATTRIBUTES = frozenset({"callbacks", "history", "pipeline_signature", "plan"})


@dataclass
class Step:
    """What pass 1 learns of one step (or group)."""

    kind: str  # "module", "retrieve" or "group"
    path: str
    doc: dict
    group: str | None  # the enclosing group
    produces: dict  # field -> canonical type (None: any JSON value)
    module: str = ""
    signature: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    members: list = field(default_factory=list)  # a group's steps (names)


@dataclass
class Declaration:
    options: dict  # canonical: {"adapter", "steps", "outputs"}
    plan: Plan
    modules: list  # [(step name, module name, signature spec, module options)], in attribute order
    fields: dict  # step name -> {field: [canonical types a demo value may have]}


def declare(args: dict, pipeline_spec: dict, path: str = "args") -> Declaration:
    wrong = sorted(k for k in ("retrieve", *AGENT_KEYS, *WRAPPER_KEYS) if args.get(k) is not None)
    if wrong:
        raise validation_error("option_not_applicable", f"{path}: {wrong} do not apply to a Pipeline program (a "
                               "step declares its own module options; retrieval is a retrieve step)", path=path,
                               options=wrong)
    steps = args.get("steps")
    if not isinstance(steps, list) or not steps:
        raise validation_error("missing_option", f"{path}.steps: a Pipeline program needs its steps",
                               path=f"{path}.steps")
    found: dict[str, Step] = {}
    top = [_define(doc, f"{path}.steps[{i}]", None, found) for i, doc in enumerate(steps)]
    if len(found) > schemas.MAX_STEPS:
        raise validation_error("too_many_steps", f"{path}.steps: at most {schemas.MAX_STEPS} steps in a pipeline, "
                               f"groups and their steps included; got {len(found)}", path=f"{path}.steps",
                               max_steps=schemas.MAX_STEPS)
    resolver = _Resolver(pipeline_spec, found)
    items, canonical = [], []
    for name in top:
        item, doc = resolver.item(name)
        items.append(item)
        canonical.append(doc)
    outputs = resolver.outputs(args.get("outputs") or {}, f"{path}.outputs")
    plan = Plan(tuple(items), tuple((name, ref) for name, ref in outputs.items()))
    modules = [(name, s.module, s.signature, s.options) for name, s in found.items() if s.kind == "module"]
    options = {"adapter": args.get("adapter", "chat"), "steps": canonical,
               "outputs": {name: ref.text() for name, ref in outputs.items()}}
    return Declaration(options, plan, modules, resolver.fields)


# -- pass 1: definitions -------------------------------------------------------------------

def _define(doc, where: str, group: str | None, found: dict) -> str:
    if not isinstance(doc, dict):
        raise validation_error("bad_step", f"{where}: a step is a map", path=where)
    if "repeat" in doc or "steps" in doc:
        kind, schema = "group", schemas.GROUP
    elif "retrieve" in doc:
        kind, schema = "retrieve", schemas.RETRIEVE_STEP
    else:
        kind, schema = "module", schemas.MODULE_STEP
    doc = json_schema.validate(schema, doc, where)
    name = doc["name"]
    if name in found:
        raise validation_error("duplicate_step", f"{where}.name: {name!r} names another step already (step names "
                               "are unique in the whole pipeline)", path=f"{where}.name")
    if name in INSTANCE_ATTRIBUTES or hasattr(Pipeline, name) or keyword.iskeyword(name):
        raise validation_error("reserved_step_name", f"{where}.name: {name!r} is a Python keyword or an attribute "
                               "of every dspy.Module; rename the step", path=f"{where}.name")
    step = found[name] = Step(kind, where, doc, group, {})
    if kind == "module":
        step.module = doc["module"]
        step.signature = _signature(doc, where)
        given = {k: doc[k] for k in (*AGENT_KEYS, *WRAPPER_KEYS) if k in doc}
        step.options = {k: v for k, v in options_of(given, step.module, step.signature, where).items()
                        if k != "adapter"}
        step.produces = {n: f["type"] for n, f in build.output_fields(step.module, step.signature,
                                                                      step.options).items()}
        if build.base_of(step.module, step.options) == "ReAct":
            step.produces["trajectory"] = None
    elif kind == "retrieve":
        step.produces = dict(PASSAGES)
    else:
        if group is not None:
            raise validation_error("bad_step", f"{where}: groups do not nest (a group's steps are module and "
                                   "retrieve steps)", path=where)
        step.members = [_define(sub, f"{where}.steps[{i}]", name, found) for i, sub in enumerate(doc["steps"])]
        for collected, text in doc.get("collect", {}).items():
            at = f"{where}.collect.{collected}"
            err = fieldtypes.field_name_error(collected, at)
            if err:
                raise err
            ref = parse_ref(text)
            if ref is None or ref.source not in step.members or ref.key not in found[ref.source].produces:
                raise validation_error("bad_collect", f"{at}: {text!r} is not an output of a step of group "
                                       f"{name!r} ('step.field')", path=at)
            step.produces[collected] = _list_of(found[ref.source].produces[ref.key])
    return name


def _signature(doc: dict, where: str) -> dict:
    """The step's signature as ``create_program`` reads one, errors placed at the step."""
    try:
        return spec.parse_signature(doc["signature"], doc.get("instructions"))
    except BridgeError as exc:
        old = str(exc.details.get("path", "args.signature"))
        new = where + old[len("args"):] if old.startswith("args.") else f"{where}.signature"
        raise validation_error(exc.code, exc.message.replace(old, new, 1),
                               **{**exc.details, "path": new}) from None


def _list_of(kind):
    """The type of a collection of values of ``kind``, flattened: list[T] stays, T becomes list[T]."""
    if kind is None:
        return None
    if isinstance(kind, str):
        return kind if kind.startswith("list[") else f"list[{kind}]"
    return kind if "list" in kind else {"list": kind}


# -- pass 2: bindings ------------------------------------------------------------------------

class _Resolver:
    def __init__(self, pipeline_spec: dict, found: dict) -> None:
        self.inputs = {n: f["type"] for n, f in pipeline_spec["inputs"].items()}
        self.wanted = {n: f["type"] for n, f in pipeline_spec["outputs"].items()}
        self.found = found
        self.seen: set[str] = set()  # sources readable at this point of the run
        self.fields: dict = {}
        self.pipeline_fields = {n: [t] for n, t in {**self.inputs, **self.wanted}.items()}

    def item(self, name: str):
        step = self.found[name]
        if step.kind != "group":
            return self.step(name)
        self.seen.add(name)  # inside: the lists collected so far
        members = [self.step(member) for member in step.members]
        collect = tuple((n, parse_ref(t)) for n, t in step.doc.get("collect", {}).items())
        doc = {"name": name, "repeat": step.doc["repeat"], "steps": [d for _, d in members],
               "collect": dict(step.doc.get("collect", {}))}
        return Group(name, step.doc["repeat"], tuple(s for s, _ in members), collect), doc

    def step(self, name: str):
        step = self.found[name]
        if step.kind == "retrieve":
            retrieve = step.doc["retrieve"]
            query, _ = self.resolve(retrieve.get("query", "question"), f"{step.path}.retrieve.query", name)
            self.seen.add(name)
            doc = {"index_id": retrieve["index_id"], "query": query.text()}
            if "k" in retrieve:
                doc["k"] = retrieve["k"]
            return RetrieveStep(name, retrieve["index_id"], query, retrieve.get("k")), {"name": name, "retrieve": doc}
        given = step.doc.get("inputs", {})
        unknown = sorted(set(given) - set(step.signature["inputs"]))
        if unknown:
            raise validation_error("unknown_input", f"{step.path}.inputs.{unknown[0]}: not an input of the step's "
                                   f"signature ({sorted(step.signature['inputs'])})",
                                   path=f"{step.path}.inputs.{unknown[0]}")
        bindings, types = [], {}
        for field_name, declared in step.signature["inputs"].items():
            ref, kind = self.resolve(given.get(field_name, field_name), f"{step.path}.inputs.{field_name}", name)
            bindings.append((field_name, ref))
            types[field_name] = [declared["type"]] + ([kind] if kind != declared["type"] else [])
        self.seen.add(name)
        self.fields[name] = _merged(self.pipeline_fields, types, {n: [t] for n, t in step.produces.items()},
                                    {n: [t] for n, t in build.REACT_FIELDS.items()
                                     if build.base_of(step.module, step.options) == "ReAct"})
        # The signature's fields as lists: their order (which the prompts follow) survives any client's maps.
        doc = {"name": name, "module": step.module, "signature": spec.ordered(step.signature),
               "inputs": {f: ref.text() for f, ref in bindings}, **step.options}
        return ModuleStep(name, tuple(bindings)), doc

    def resolve(self, text, where: str, reader: str | None) -> tuple[Ref, object]:
        """A reference read at ``where`` -> (Ref, the type of its values); raises ``validation``."""
        ref = parse_ref(text)
        if ref is None:
            raise validation_error("bad_reference", f"{where}: {text!r} is not a reference: a pipeline input "
                                   "('question') or a step's output ('step.field')", path=where)
        if ref.source == INPUTS:
            if ref.key not in self.inputs:
                raise validation_error("unknown_reference", f"{where}: {ref.key!r} is not an input of the pipeline "
                                       f"({sorted(self.inputs)}); an earlier step's output is 'step.field'",
                                       path=where, reference=text)
            return ref, self.inputs[ref.key]
        source = self.found.get(ref.source)
        if source is None:
            raise validation_error("unknown_step", f"{where}: no step is named {ref.source!r}", path=where,
                                   reference=text)
        if ref.source == reader or ref.source not in self.seen:
            raise validation_error("forward_reference", f"{where}: step {ref.source!r} does not run before this "
                                   "one; a step reads pipeline inputs and the outputs of earlier steps (a cycle "
                                   "cannot be declared)", path=where, reference=text)
        if ref.key not in source.produces:
            raise validation_error("unknown_field", f"{where}: step {ref.source!r} produces "
                                   f"{sorted(source.produces)}, not {ref.key!r}", path=where, reference=text)
        return ref, source.produces[ref.key]

    def outputs(self, given: dict, where: str) -> dict:
        unknown = sorted(set(given) - set(self.wanted))
        if unknown:
            raise validation_error("unknown_output", f"{where}.{unknown[0]}: not an output of the pipeline's "
                                   f"signature ({sorted(self.wanted)})", path=f"{where}.{unknown[0]}")
        self.seen = set(self.found)
        order = list(reversed(self._run_order()))
        bound = {}
        for name, kind in self.wanted.items():
            at = f"{where}.{name}"
            if name in given:
                ref, produced = self.resolve(given[name], at, None)
            else:
                source = next((s for s in order if name in self.found[s].produces), None)
                if source is None:
                    raise validation_error("unbound_output", f"{at}: no step produces {name!r}; bind it to one "
                                           "('step.field')", path=at)
                ref, produced = Ref(source, name), self.found[source].produces[name]
            if produced is not None and produced != kind and kind != f"optional[{produced}]":
                raise validation_error("type_mismatch", f"{at}: {ref.text()!r} is {produced}, the output is {kind}",
                                       path=at)
            bound[name] = ref
        return bound

    def _run_order(self) -> list[str]:
        """Step names in the order their values become final (a group after its steps)."""
        order = []
        for name, step in self.found.items():
            if step.kind == "group":
                continue
            order.append(name)
            group = step.group
            if group is not None and name == self.found[group].members[-1]:
                order.append(group)
        return order


def _merged(*maps: dict) -> dict:
    """``{field: [types]}`` maps joined: a field in several gets every type they list."""
    out: dict = {}
    for types in maps:
        for name, kinds in types.items():
            out.setdefault(name, [])
            out[name] += [k for k in kinds if k not in out[name]]
    return out
