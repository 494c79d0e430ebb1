"""Exposing modules: which Python code a worker serves, as the operator chose it.

A module's ``@command`` functions become commands (``namespace.function``),
its ``@program`` classes DSPy programs (``namespace.Class``, built by
``create_program``; ``bridge.sdk.programs``).

Two sources, both in the operator's hands (never the client's):

- ``portbridge worker --expose mypkg.mathcmds`` (repeatable, or comma-separated;
  ``mypkg.mathcmds=math`` picks the namespace);
- the ``portbridge.commands`` entry-point group of installed distributions:
  ``math = "mypkg.mathcmds"`` (the entry point's name is the namespace).

Each exposed module is a backend of its own (``bridge.backends``), named by its
namespace: it is imported, and its commands registered, on the worker's
backend thread just after ``ready``, so a slow import never delays the
handshake; a module that fails to import is reported by ``health`` and
``describe`` (the worker keeps serving the rest), and a bad type hint stops
the worker at start-up with a message naming the function. Two modules under
one namespace are refused at start-up rather than one hiding the other.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from typing import Callable

from ..backends import Backend
from ..errors import RegistrationError
from . import programs
from .commands import build, declared

GROUP = "portbridge.commands"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAMESPACE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Exposed(Backend):
    """The commands of one module, under one namespace."""

    def __init__(self, module: str, namespace: str) -> None:
        self.name = namespace
        self.module = module
        self.commands: list[str] = []
        self.programs: list[str] = []
        # The working directory is where modules are found first, as with ``python -m bridge worker``
        # (what the Elixir client runs), also when the ``portbridge`` script runs the worker.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        # A module of @program classes imports DSPy, which reads its environment (cache folder, price
        # list) as it imports: the worker's settings first, as the DSPy backend's import gate makes them.
        from ..backends.dspy.loader import prepare_environment

        prepare_environment()
        importlib.import_module(module)  # here, where the loader reports any failure as a failed backend

    def register(self, registry) -> None:
        functions, classes = declared(self.module), programs.declared(self.module)
        if not functions and not classes:
            raise RegistrationError(f"module {self.module} (exposed as {self.name}) has no @command functions "
                                    "and no @program classes")
        found = [programs.expose(cls, self.name) for cls in classes]  # every class read before any is served
        for fn in functions:
            self.commands.append(registry.add(build(fn, self.name, self.name)).name)
        for program in found:
            programs.PROGRAMS.add(program)
            self.programs.append(program.name)

    def describe(self) -> dict:
        return {"state": "ready", "module": self.module, "commands": self.commands, "programs": self.programs}


def parse(values: list[str]) -> list[tuple[str, str]]:
    """``--expose`` values -> (module, namespace) pairs; raises RegistrationError on a malformed one."""
    out = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            module, _, namespace = item.partition("=")
            module, namespace = module.strip(), namespace.strip() or module.strip().rsplit(".", 1)[-1]
            if not _MODULE.match(module) or not _NAMESPACE.match(namespace):
                raise RegistrationError(f"--expose {item!r}: expected a module path such as mypkg.mathcmds, "
                                        "optionally =namespace (a Python identifier)")
            out.append((module, namespace))
    return out


def installed() -> list[tuple[str, str]]:
    """(module, namespace) of every ``portbridge.commands`` entry point."""
    from importlib.metadata import entry_points

    return [(ep.value.strip(), ep.name) for ep in entry_points(group=GROUP)]


Source = tuple[str, Callable[[], Backend]]  # (label, make_backend), as bridge.backends.load takes them


def backends(expose: list[str], selected: list[str] | None = None) -> tuple[list[Source], list[str] | None]:
    """What to load: ``(label, make_backend)`` sources for ``bridge.backends.load`` (the installed
    modules, then those of ``--expose``), and what is left of ``selected`` (``--backends``:
    None for every installed plug-in; names of installed modules are taken out of it).
    Raises RegistrationError on a namespace taken twice."""
    found = installed()
    if selected is not None:
        found = [(module, namespace) for module, namespace in found if namespace in selected]
        taken = {namespace for _, namespace in found}
        selected = [name for name in selected if name not in taken]
    owners: dict[str, str] = {}
    sources: list[Source] = []
    for module, namespace in found + parse(expose):
        if owners.get(namespace) == module:
            continue  # exposed twice (installed and on the command line): once is enough
        if namespace in owners:
            raise RegistrationError(
                f"modules {owners[namespace]} and {module} would both be exposed as {namespace!r}; "
                f"name one with --expose {module}=other_name")
        owners[namespace] = module
        sources.append((f"{namespace} ({module})", functools.partial(Exposed, module, namespace)))
    return sources, selected
