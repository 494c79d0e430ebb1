"""The command registry: name -> handler, argument schema, control flag.

Handlers have one signature, ``handler(ctx, args) -> result``, where ``args``
has already passed the command's schema. Registration fails loudly: an empty or
duplicate name, a schema outside the supported subset, or a handler that is not
callable raises ``RegistrationError`` at start-up. The decorator returns the
function unchanged, so handlers stay plain functions that tests can call.

Backends also register error classifiers: ``classifier(exc) -> BridgeError |
None`` turns a framework's exceptions into wire categories.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from .errors import BridgeError, RegistrationError, combined, leaves
from .schema import check_schema, compile_validator

# Core and backend commands: ``execute_program``. Commands of exposed Python modules (bridge.sdk)
# carry their namespace: ``mathcmds.add`` (Python identifiers on both sides of the dot).
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$|^[A-Za-z_][A-Za-z0-9_]{0,63}\.[A-Za-z_][A-Za-z0-9_]{0,63}$")
ANY_ARGS = {"type": "object"}
NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass
class Command:
    name: str
    handler: Callable
    schema: dict
    control: bool = False
    backend: str = "core"
    description: str = ""
    # Holds the GIL while it computes: best served by a pool that gives each Python one request at a time.
    cpu_bound: bool = False
    # check(args) -> args with defaults; compiled from ``schema`` by Registry.add
    check: Callable[[dict], dict] = field(default=lambda args: args, repr=False, compare=False)
    # {} passes the schema unchanged (no required argument, no default): empty args need no check
    empty_args_ok: bool = field(default=False, repr=False, compare=False)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "backend": self.backend,
            "control": self.control,
            "description": self.description,
            "cpu_bound": self.cpu_bound,
            "args": self.schema,
        }


@dataclass
class Registry:
    commands: dict[str, Command] = field(default_factory=dict)
    classifiers: list[Callable[[BaseException], BridgeError | None]] = field(default_factory=list)
    # Set once every backend has registered (backends register after ``ready``).
    complete: threading.Event = field(default_factory=threading.Event)

    def add(self, command: Command) -> Command:
        if not isinstance(command.name, str) or not NAME.match(command.name):
            raise RegistrationError(f"command name {command.name!r} must match {NAME.pattern}")
        if command.name in self.commands:
            owner = self.commands[command.name].backend
            raise RegistrationError(f"command {command.name!r} is already registered by {owner!r}")
        if not callable(command.handler):
            raise RegistrationError(f"handler for {command.name!r} is not callable")
        check_schema(command.schema, f"{command.name}.args")
        if command.schema.get("type") != "object":
            raise RegistrationError(f"{command.name}.args schema must have type 'object'")
        command.check = compile_validator(command.schema)
        try:
            command.empty_args_ok = command.check({}) == {}
        except BridgeError:
            command.empty_args_ok = False
        self.commands[command.name] = command
        return command

    def command(
        self,
        name: str,
        *,
        schema: dict | None = None,
        control: bool = False,
        backend: str = "core",
        description: str | None = None,
    ):
        """Decorator: register ``fn(ctx, args)`` as ``name``; returns ``fn`` unchanged."""

        def decorate(fn):
            doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
            self.add(Command(name, fn, NO_ARGS if schema is None else schema, control, backend, doc))
            return fn

        return decorate

    def classifier(self, fn: Callable[[BaseException], BridgeError | None]):
        """Register an exception classifier; returns it unchanged."""
        if not callable(fn):
            raise RegistrationError("a classifier must be callable")
        self.classifiers.append(fn)
        return fn

    def get(self, name: str) -> Command | None:
        return self.commands.get(name)

    def lookup(self, name: str, wait_s: float = 30.0) -> Command | None:
        """Like ``get``, but an unknown name waits for backend registration to finish first."""
        command = self.commands.get(name)
        if command is None and not self.complete.is_set():
            self.complete.wait(wait_s)
            command = self.commands.get(name)
        return command

    def names(self) -> list[str]:
        return sorted(self.commands)

    def classify(self, exc: BaseException) -> BridgeError:
        """The wire error for any exception: its own category, a backend's verdict, else internal."""
        if isinstance(exc, BridgeError):
            return exc
        if isinstance(exc, BaseExceptionGroup):  # e.g. a task group's: each failure classified, all kept
            return combined([self.classify(leaf) for leaf in leaves(exc)])
        for fn in self.classifiers:
            try:
                found = fn(exc)
            except Exception:  # a broken classifier must not hide the original failure
                found = None
            if isinstance(found, BridgeError):
                return found
        kind = type(exc).__name__
        try:
            text = str(exc)
        except Exception:  # an exception whose __str__ raises (or returns a non-string) still gets its reply
            text = "<str() of the exception failed>"
        return BridgeError(
            "internal",
            "unhandled_exception",
            f"{kind}: {text}"[:2000] if text else kind,
            {"exception": kind},
        )
