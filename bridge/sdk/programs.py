"""``@program``: a ``dspy.Module`` subclass the operator exposes as a DSPy program.

    import dspy
    from bridge.sdk import Context, program

    @program
    class MultiHop(dspy.Module):
        \"\"\"Answer with several searches.\"\"\"          # describe text

        def __init__(self, hops: int = 2): ...              # init: schema from the hints
        def forward(self, question: str, ctx: Context | None = None): ...   # inputs: schema from the hints

The decorator only marks the class (it must subclass ``dspy.Module`` and
define ``forward``) and remembers it under its module. When the module is
exposed (``portbridge worker --expose mypkg.myprogs``, or the
``portbridge.commands`` entry-point group) ``expose`` reads the class once:
``__init__``'s hints give the schema of ``create_program``'s ``init``,
``forward``'s the schema of the inputs, its return hint (a TypedDict or a
dataclass) the outputs when it names them; every hint must have a JSON form
(``bridge.sdk.hints``), else the worker stops at start-up naming it. The
program is then ``<namespace>.<Class>`` (``@program(name=...)`` renames the
class part) in ``PROGRAMS``, the table the DSPy backend builds programs from:
a name that is not there is a program nobody exposed, and nothing is ever
imported to find one.

A ``forward`` parameter annotated ``Context`` (or ``Context | None``, so that
the module also runs in plain DSPy) receives the running request's context,
scoped to the namespace as a command's is, wherever DSPy calls ``forward``
(an optimiser's threads included): callbacks to the client, ``progress``,
the deadline and cancellation. The DSPy backend puts that context in its run's
settings under ``SETTING``; outside a worker the parameter gets None.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, get_type_hints

from ..errors import RegistrationError, not_found
from ..schema import check_schema, validate
from .commands import IDENTIFIER, user_errors
from .hints import is_typeddict, schema_of
from .parameters import Parameters, convert, description, parameters

MARK = "__portbridge_program__"  # what @program sets on a class: its exposed name
SETTING = "portbridge_context"  # dspy.context key: the running request's Context, scoped to the program's namespace
WRAPPED = "__portbridge_context_parameter__"  # on a forward that receives the context
_DECLARED: dict[str, list[type]] = {}  # module name -> its decorated classes, in order


def program(cls: type | None = None, *, name: str | None = None):
    """Mark a ``dspy.Module`` subclass as a program of its module; returns the class unchanged.

    ``@program`` or ``@program(name="OtherName")``. The schemas are derived when
    the module is exposed, so hints may name classes defined further down.
    """

    def mark(cls: type) -> type:
        if not isinstance(cls, type):
            raise RegistrationError(f"@program decorates dspy.Module subclasses, not {type(cls).__name__}")
        dspy = sys.modules.get("dspy")  # a dspy.Module subclass exists only once dspy is imported
        if dspy is None or not issubclass(cls, dspy.Module):
            raise RegistrationError(f"@program: {cls.__qualname__} must subclass dspy.Module")
        if not callable(getattr(cls, "forward", None)):
            raise RegistrationError(f"@program: {cls.__qualname__} has no forward method")
        program_name = cls.__name__ if name is None else name
        if not isinstance(program_name, str) or not IDENTIFIER.match(program_name):
            raise RegistrationError(f"@program name {program_name!r} must be a Python identifier of at most 64 "
                                    "characters")
        setattr(cls, MARK, {"name": program_name})
        _DECLARED.setdefault(cls.__module__, []).append(cls)
        return cls

    return mark if cls is None else mark(cls)


def declared(module_name: str) -> list[type]:
    """The classes ``@program`` marked in a module (already imported), in the order they were defined."""
    return list(_DECLARED.get(module_name, ()))


@dataclass
class ProgramClass:
    """An exposed class as the DSPy backend builds programs from it."""

    name: str  # "<namespace>.<Class>"
    namespace: str
    cls: type
    description: str
    init: Parameters
    inputs: Parameters  # forward's
    outputs: dict | None  # the schema of forward's return hint when it names the outputs

    def describe(self) -> dict:
        return {"name": self.name, "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
                "description": self.description, "init": self.init.schema, "inputs": self.inputs.schema,
                "outputs": self.outputs}

    def instantiate(self, init: dict, path: str = "args.init"):
        """A new module from ``init`` (JSON, checked against the schema, converted as the hints say)."""
        checked = validate(self.init.schema, init, path)
        with user_errors():
            return self.cls(**convert(self.init, checked))

    def check_inputs(self, inputs: dict, path: str = "args.inputs") -> None:
        validate(self.inputs.schema, inputs, path)

    def python_inputs(self, inputs: dict) -> dict:
        return convert(self.inputs, inputs)

    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else list(self.outputs.get("properties", {}))

    def check_outputs(self, outputs: dict, path: str) -> None:
        """Labelled outputs (trainsets): checked against the outputs' schema when known, some may be absent."""
        if self.outputs is not None:
            validate({**self.outputs, "required": []}, outputs, path)


def expose(cls: type, namespace: str) -> ProgramClass:
    """Read a decorated class once (schemas, converters, the context parameter); raises
    RegistrationError, naming the class and the parameter, for a hint without a JSON form."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    init_fn = _own_init(cls)
    init = Parameters({"type": "object", "properties": {}, "additionalProperties": False}, {}, None) \
        if init_fn is None else parameters(init_fn, f"{where}.__init__", skip=1, doc=_doc(init_fn) or _doc(cls))
    if init.context is not None:
        raise RegistrationError(f"{where}.__init__: parameter {init.context!r} takes the Context, which only "
                                "forward receives (a program outlives the request that creates it)")
    forward = getattr(cls, "forward")
    own_forward = getattr(forward, "__wrapped__", forward)
    inputs = parameters(own_forward, f"{where}.forward", skip=1, doc=_doc(own_forward))
    for schema, part in ((init.schema, "__init__"), (inputs.schema, "forward")):
        check_schema(schema, f"{where}.{part}")
    if inputs.context is not None and not hasattr(forward, WRAPPED):
        setattr(cls, "forward", _receiving_context(forward, inputs.context))
    return ProgramClass(f"{namespace}.{vars(cls)[MARK]['name']}", namespace, cls, description(_doc(cls)), init,
                        inputs, _outputs(forward, where))


def _own_init(cls: type) -> Callable | None:
    """The ``__init__`` the class (or a base of its own) defines, None when only DSPy's or object's is there."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            owner = klass.__module__.split(".")[0]
            return None if owner in ("dspy", "builtins") else vars(klass)["__init__"]
    return None


def _doc(obj: Any) -> str:
    """An object's own docstring, cleaned (``inspect.getdoc`` would give a class or method without one
    the docstring of what it overrides: dspy.Module's)."""
    return inspect.cleandoc((vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__) or "")


def _outputs(forward: Callable, where: str) -> dict | None:
    """The outputs' schema when forward's return hint names them (a TypedDict or a dataclass)."""
    hint = get_type_hints(getattr(forward, "__wrapped__", forward)).get("return")
    if is_typeddict(hint) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return schema_of(hint, f"{where}.forward(return)")
    return None  # a dspy.Prediction, or no hint: the outputs are what forward returns


def _receiving_context(forward: Callable, parameter: str) -> Callable:
    """``forward`` given the running request's context whenever a caller leaves it out (DSPy's own calls)."""

    @functools.wraps(forward)
    def with_context(self, *args, **kwargs):
        if parameter not in kwargs:
            kwargs[parameter] = current()
        return forward(self, *args, **kwargs)

    setattr(with_context, WRAPPED, parameter)
    return with_context


def current():
    """The running request's context in this thread (None outside a worker's DSPy run)."""
    dspy = sys.modules.get("dspy")
    return None if dspy is None else dspy.settings.get(SETTING)


class Programs:
    """The exposed classes of this worker by name (filled at start-up, read by every request)."""

    def __init__(self) -> None:
        self._classes: dict[str, ProgramClass] = {}
        self._lock = threading.Lock()
        self.settled: threading.Event | None = None  # set once every exposed module has registered

    def add(self, found: ProgramClass) -> None:
        with self._lock:
            if found.name in self._classes:
                raise RegistrationError(f"program {found.name!r} is exposed twice")
            self._classes[found.name] = found

    def get(self, name: str, wait_s: float = 30.0) -> ProgramClass:
        """The exposed class named ``name``; ``not_found`` when nobody exposed it (nothing is imported)."""
        found = self._classes.get(name)
        if found is None and self.settled is not None and not self.settled.is_set():
            self.settled.wait(wait_s)  # exposed modules still importing at start-up
            found = self._classes.get(name)
        if found is None:
            raise not_found("unknown_module", f"no program module {name!r}: a module is a built-in one or a "
                            "dspy.Module class the worker's operator exposed (describe lists them under "
                            "backends.dspy.exposed_programs)", module=name)
        return found

    def describe(self) -> dict:
        with self._lock:
            return {name: found.describe() for name, found in sorted(self._classes.items())}


PROGRAMS = Programs()


def is_exposed_name(module: Any) -> bool:
    """``<namespace>.<Class>``: the form of an exposed program's module (built-in modules have no dot)."""
    if not isinstance(module, str):
        return False
    namespace, dot, name = module.partition(".")
    return bool(dot) and bool(IDENTIFIER.match(namespace)) and bool(IDENTIFIER.match(name))

