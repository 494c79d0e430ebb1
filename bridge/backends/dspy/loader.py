"""The one gate in front of ``import dspy``.

``import dspy`` costs about a second (and litellm, when DSPy needs it, several
more), so the worker says ``ready`` first and imports DSPy on a background
thread started by ``Backend.start``. While that import runs, no other thread
may import a ``dspy.<submodule>``: that deadlocks or sees half-initialised
modules. So every use of DSPy goes through ``require()``, which waits for the
import to finish and returns the module, or raises an ``initialization``
error that says how to install DSPy. Nothing in this package imports DSPy at
module level except the modules that are themselves imported after the gate.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from ...errors import BridgeError

log = logging.getLogger("portbridge.dspy")

# Said for any client: what the worker's environment lacks (no Python API advice). A
# client adds the command that installs it where it runs (the Elixir client says which
# in a Mix project, a release or Livebook): the worker cannot know.
INSTALL_HINT = "install portbridge[dspy] into the worker's Python environment"
WAIT_S = 120.0  # a command arriving early waits this long at most for the import


def cache_dir() -> str:
    """A directory the worker owns for DSPy's disk cache (used only by LMs configured with cache=true)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.access(os.path.dirname(base) if not os.path.isdir(base) else base, os.W_OK):
        import tempfile  # on the import thread, not while the backend registers

        base = tempfile.gettempdir()
    return os.path.join(base, "portbridge", "dspy")


def prepare_environment() -> None:
    """Environment DSPy reads at import time; an operator's own settings win."""
    # Without it litellm fetches a price list from the internet on first use (up to 5 s).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # Optimizers draw tqdm progress bars on stderr; progress goes out as events instead.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("DSPY_CACHEDIR", cache_dir())


def adopt_logging() -> None:
    """Send DSPy's log records through the worker's handlers.

    DSPy gives its ``dspy`` logger a handler of its own that writes to stderr
    and stops propagation: its lines would bypass the worker's format
    (``--log-format json``), level, secret scrubbing and ``log`` events.
    """
    logger = logging.getLogger("dspy")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


class Gate:
    def __init__(self) -> None:
        self.state = "idle"  # idle -> loading -> ready | failed
        self.error: str | None = None
        self.version: str | None = None
        self.import_s: float | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._module = None

    def start(self) -> None:
        """Begin importing DSPy on a background thread (once)."""
        with self._lock:
            if self.state != "idle":
                return
            self.state = "loading"
        threading.Thread(target=self._import, name="portbridge-dspy-import", daemon=True).start()

    def _import(self) -> None:
        started = time.perf_counter()
        try:
            prepare_environment()
            import dspy

            adopt_logging()
            from . import patches  # on this thread: nothing else may import dspy submodules yet

            patches.apply(dspy)
            self._module = dspy
            self.version = getattr(dspy, "__version__", None)
            self.state = "ready"
        except BaseException as exc:  # noqa: BLE001 - any import failure must become an answer
            self.error = f"{type(exc).__name__}: {exc}"[:1000]
            self.state = "failed"
            log.error("DSPy failed to import: %s", self.error, exc_info=not isinstance(exc, ImportError))
        finally:
            self.import_s = round(time.perf_counter() - started, 3)
            self._done.set()

    def require(self, wait_s: float = WAIT_S):
        """The ``dspy`` module once imported; raises ``initialization`` if it cannot be had."""
        if self.state == "idle":
            self.start()  # a worker whose start() hook was not called (tests driving the backend directly)
        if not self._done.wait(wait_s):
            raise BridgeError(
                "initialization", "dspy_loading",
                f"DSPy is still importing after {wait_s:.0f} s; the worker may be starved of CPU",
                {"waited_s": wait_s},
            )
        if self._module is None:
            missing = self.error is not None and self.error.startswith("ModuleNotFoundError")
            raise BridgeError(
                "initialization", "dspy_missing" if missing else "dspy_import_failed",
                f"DSPy is not available in this worker ({self.error}); {INSTALL_HINT}",
                {"error": self.error, "python": sys.executable},
            )
        return self._module

    def status(self) -> dict:
        doc = {"state": {"idle": "loading"}.get(self.state, self.state)}
        if self.version:
            doc["dspy_version"] = self.version
        if self.import_s is not None:
            doc["import_s"] = self.import_s
        if self.error:
            doc["error"] = f"{self.error}; {INSTALL_HINT}"
        return doc


GATE = Gate()  # the one gate of this process: DSPy is imported once
