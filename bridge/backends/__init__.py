"""Framework backends as plug-ins.

A backend is an object found through the ``portbridge.backends`` entry-point
group (``name = "package.module:attribute"``; the attribute is a ``Backend``
instance or a class to instantiate). Adding one touches no core file: install a
distribution that declares the entry point, and ``portbridge worker`` (or
``--backends name``) picks it up. portbridge's own DSPy backend is registered
the same way, in this project's ``pyproject.toml``.

The hooks, who calls them and when:

``register(registry)``
    Called once at start-up, on the main thread, before ``ready`` is sent.
    Register commands (``registry.command(...)``) and exception classifiers.
    Must be cheap: import nothing heavy here (a worker answers ``ping`` ~40 ms
    after spawn only if no backend imports its framework in this hook).

``start()``
    Called once, right after ``ready`` was written. Start background work
    here, such as importing the framework in a thread.

``status() -> dict``
    Called for ``ready``, ``describe`` and ``health``, from any thread, at any
    time: ``{"state": "loading" | "ready" | "failed", ...}``. Must not block.

``describe() -> dict``
    Called by ``describe``: the status plus anything a client should know
    (supported modules, optimizers, metrics...).

``close_session(session, reason)``
    Called when a session ends (``"ended"``) or expires (``"expired"``), on the
    thread that ended it. Release what the backend kept in ``session``.

``shutdown()``
    Called once when the worker stops, before it exits. Must be quick.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..errors import RegistrationError

log = logging.getLogger("portbridge.backends")
GROUP = "portbridge.backends"


class Backend:
    """Base class with no-op hooks; a backend overrides ``register`` and what it needs."""

    name = ""

    def register(self, registry) -> None:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def status(self) -> dict:
        return {"state": "ready"}

    def describe(self) -> dict:
        return self.status()

    def close_session(self, session, reason: str) -> None:
        pass

    def shutdown(self) -> None:
        pass


class FailedBackend(Backend):
    """Stands in for a backend whose entry point could not be loaded."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self.error = f"{type(error).__name__}: {error}"

    def register(self, registry) -> None:
        pass

    def status(self) -> dict:
        return {"state": "failed", "error": self.error}


def available() -> dict:
    """Entry points of every installed backend, by name."""
    from importlib.metadata import entry_points  # ~30 ms of imports: only when discovering

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _import_object(spec: str):
    """``package.module:attribute`` -> the attribute (the form of an entry point's value).

    A spec that names no module or attribute is a bad option (RegistrationError); a module that
    exists but fails while importing raises what it raised."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RegistrationError(f"--backend-module {spec!r} must look like 'package.module:attribute'")
    import importlib

    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise RegistrationError(f"--backend-module {spec!r}: no module named {exc.name!r}") from None
        raise  # the module exists; something it imports does not
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistrationError(f"--backend-module {spec!r}: {module_name} has no attribute {attr!r}") from None
    return obj


def load(registry, names: list[str] | None = None, modules: Sequence[str] = (),
         extra: Sequence = ()) -> dict[str, Backend]:
    """Load backends and let them register; returns them by name.

    ``names`` picks installed entry points (all of them if None). ``modules``
    adds backends by import path (``package.module:attribute``), as given by
    the worker's owner with ``--backend-module``: for developing and testing a
    backend before it is packaged. ``extra``: more ``(label, make_backend)``
    sources (the modules ``bridge.sdk`` exposes). An unknown name, or a module
    or attribute that cannot be found, raises RegistrationError (a bad option);
    a backend whose code fails to import, or whose ``register`` raises anything
    but RegistrationError, is kept as a FailedBackend (reported by ``health``
    and ``describe``, its half-registered commands removed) so that the core
    and the others keep working.
    """
    found = available() if names is None or names else {}
    wanted = list(found) if names is None else names
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise RegistrationError(
            f"unknown backend(s) {', '.join(unknown)}; installed: {', '.join(sorted(found)) or 'none'}"
        )
    sources = [(name, found[name].load) for name in wanted]
    sources += [(spec, lambda spec=spec: _import_object(spec)) for spec in modules]
    sources += list(extra)
    backends: dict[str, Backend] = {}
    for label, load_object in sources:
        try:
            obj = load_object()
            backend = obj() if isinstance(obj, type) else obj
        except RegistrationError:
            raise
        except BaseException as exc:  # noqa: BLE001 -- a module's top level may even raise SystemExit
            log.error("backend %s failed to load: %s", label, exc, exc_info=True)
            backends[label] = FailedBackend(label, exc)
            continue
        backend.name = backend.name or label
        if backend.name in backends:
            raise RegistrationError(f"two backends are named {backend.name!r}")
        commands, classifiers = set(registry.commands), len(registry.classifiers)
        try:
            backend.register(registry)
        except RegistrationError:
            raise
        except Exception as exc:
            log.error("backend %s failed to register: %s", backend.name, exc, exc_info=True)
            for name in set(registry.commands) - commands:
                del registry.commands[name]
            del registry.classifiers[classifiers:]
            backends[backend.name] = FailedBackend(backend.name, exc)
            continue
        backends[backend.name] = backend
    return backends
