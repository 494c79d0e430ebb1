"""The few places the worker changes DSPy 3.4 itself, each with its reason (applied once, after the import).

They are applied by the import gate on its own thread, right after ``import
dspy`` and before any command can run, so no other thread sees DSPy half
patched. None changes what is sent to an LM or what a program returns.

* ``model_info`` cache: DSPy looks up model metadata (capabilities, prices)
  on every LM call. For a model name its table does not list (self-hosted,
  vLLM, fine-tunes) the lookup scans all ~4,460 entries: ~600 us against
  ~36 us, about 45% of a busy worker's GIL time. The table never changes
  once loaded, so each (provider, model, namespaces) is looked up once; a
  copy is returned, as DSPy returns a copy. ``benchmarks`` measures it.
* Proxy variables read once a second: DSPy's HTTP transport reads every
  variable of the environment before every request to find ``*_PROXY``
  (~6% of a busy worker's CPU); the worker keeps what it read for a second.
* One pydantic ``TypeAdapter`` per built-in type: DSPy builds one for every
  value it formats and every output it parses (~4% of a busy worker's CPU).
* The provider's own error message: the OpenAI-compatible client reads an
  error's message only from ``{"error": {"message"}}``; a FastAPI-style
  ``{"detail": "Not Found"}`` (vLLM and most self-hosted servers, the usual
  answer to a wrong ``api_base``) became a bare ``[openai/<model>]``. When
  DSPy found no message, the body's ``detail``/``message``/``error`` string,
  or else the body's text, becomes the message.
* LM calls metered and admitted (``metering``): DSPy's ``execute`` and
  ``_engine`` wrapped, for the LMs the bridge built, so each call's price
  reaches the request's usage although history is off, each call can be
  reported as an ``lm_call`` event, and each HTTP attempt of an LM with a
  ``rate_limit`` is admitted by the client and retried by the bridge.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Callable

MAX_CACHED_MODELS = 4096
MAX_BODY_CHARS = 500
PROXY_SETTINGS_TTL_S = 1.0  # how long the proxy variables read from the environment are kept


def apply(dspy) -> None:
    cache_model_info()
    cache_proxy_settings()
    cache_builtin_type_adapters()
    keep_provider_messages()
    silence_progress_bars()
    from . import metering

    metering.install()


def cache_proxy_settings() -> None:
    """DSPy's HTTP transport reads the proxy variables (``urllib.request.getproxies``: every
    variable of the environment, decoded and lower-cased) before every request: ~6% of a busy
    worker's CPU. The worker reads them at most once a second instead (``kept``)."""
    from dspy._vendor.lm15.transports import _proxy

    if not getattr(_proxy.getproxies, "portbridge_patched", False):
        _proxy.getproxies = kept(_proxy.getproxies, PROXY_SETTINGS_TTL_S)


def cache_builtin_type_adapters(utils=None) -> None:
    """DSPy builds a pydantic ``TypeAdapter`` for every value it writes into a prompt and every
    output it parses (``dspy.adapters.utils``): ~4% of a busy worker's CPU, nearly all of it for
    ``str``, ``int`` and the like. The worker builds one per built-in type and reuses it (an
    adapter of a type never changes); any other type gets a new one, as before. (``utils``: the
    module to patch, ``dspy.adapters.utils`` unless a test gives another.)"""
    if utils is None:
        from dspy.adapters import utils

    original = utils.TypeAdapter
    if getattr(original, "portbridge_patched", False):
        return
    built: dict[type, object] = {}

    def TypeAdapter(tp, *args, **kwargs):  # noqa: N802 -- stands in for the class of that name
        if args or kwargs or not (isinstance(tp, type) and tp.__module__ == "builtins"):
            return original(tp, *args, **kwargs)
        adapter = built.get(tp)
        if adapter is None:
            adapter = built[tp] = original(tp)
        return adapter

    TypeAdapter.portbridge_patched = True  # type: ignore[attr-defined]
    utils.TypeAdapter = TypeAdapter


def kept(read: Callable[[], dict], ttl_s: float, clock: Callable[[], float] = time.monotonic) -> Callable[[], dict]:
    """``read`` called at most once per ``ttl_s`` seconds: a variable changed while the worker runs
    is honoured from the next read on. Each caller gets its own copy."""
    lock = threading.Lock()
    last: list = [None, 0.0]  # what was read, and when

    def cached() -> dict:
        now = clock()
        value, at = last
        if value is None or now - at >= ttl_s:
            with lock:
                value = read()
                last[:] = [value, now]
        return dict(value)

    cached.portbridge_patched = True  # type: ignore[attr-defined]
    return cached


def silence_progress_bars() -> None:
    """Evaluate and the optimisers draw tqdm bars with ``disable=False`` set explicitly, which beats
    ``TQDM_DISABLE``; in a worker they are only noise on stderr: progress goes out as events."""
    import tqdm

    original = tqdm.tqdm.__init__
    if getattr(original, "portbridge_patched", False):
        return

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    __init__.portbridge_patched = True
    tqdm.tqdm.__init__ = __init__


def cache_model_info() -> None:
    from dspy.clients import capabilities, costs, model_metadata

    original = model_metadata.model_info
    if getattr(original, "portbridge_cached", False):
        return
    cache: dict = {}
    lock = threading.Lock()

    def model_info(provider, model, *, namespaces=None):
        key = (provider, model, None if namespaces is None else tuple(namespaces))
        found = cache.get(key)
        if found is None:
            found = original(provider, model, namespaces=namespaces)
            with lock:
                if len(cache) >= MAX_CACHED_MODELS:
                    cache.clear()
                cache[key] = found
        return copy.deepcopy(found)

    model_info.portbridge_cached = True
    model_info.__wrapped__ = original
    for module in (model_metadata, costs, capabilities):
        module.model_info = model_info


def body_message(body: str) -> str:
    """The human-readable part of an error body that has no OpenAI ``error.message``."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("detail", "message", "error"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:MAX_BODY_CHARS]
    return body.strip()[:MAX_BODY_CHARS]


def keep_provider_messages() -> None:
    """On both OpenAI-compatible clients (chat completions, and responses: they share the parser)."""
    from dspy._vendor.lm15.providers.openai import OpenAILM
    from dspy._vendor.lm15.providers.openai_chat import OpenAIChatLM

    for cls in (OpenAILM, OpenAIChatLM):
        original = cls.__dict__["normalize_error"]
        if getattr(original, "portbridge_patched", False):
            continue
        cls.normalize_error = _keeping_body(original)


def _keeping_body(original):
    def normalize_error(self, status: int, body: str):
        error = original(self, status, body)
        if not (error.message or "").strip():
            error.message = body_message(body or "") or f"HTTP {status}"
            error.args = (error.message,)
        return error

    normalize_error.portbridge_patched = True
    return normalize_error
