"""Language models per scope: building them from ``configure_lm`` args, picking one per call.

Every LM is its own ``dspy.LM`` (never ``dspy.configure``): a call runs under
``dspy.context(lm=...)`` in the thread that executes it, so sessions with
different models never see each other's. The response cache is off unless a
client asks for it (DSPy's disk cache is process-wide and keyed without the
API base or key). API keys are registered as secrets the moment they arrive,
and are never kept anywhere a reply, log or export could show them.
Imported after the gate.
"""

from __future__ import annotations

import bisect
import threading
from urllib.parse import urlsplit, urlunsplit

from dspy.utils.usage_tracker import UsageTracker

from ...errors import BridgeError, validation_error
from ...redaction import register_secret
from .offline import make_lm
from .state import LMConfig, Scope

OFFLINE = "offline"
# A call's LM timeout follows its request's deadline, rounded up to one of these
# (seconds), so that an LM keeps a handful of connection pools, not one per request.
DEADLINE_STEPS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


def _public_base(url: str) -> str:
    """The API base without any user:password part."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def build(dspy, args: dict) -> LMConfig:
    """A configured LM from checked ``configure_lm`` args; raises ``validation`` for bad settings."""
    model = args["model"]
    api_key = args.get("api_key")
    if api_key:
        register_secret(api_key)
    settings = {
        "temperature": args.get("temperature"),
        "max_tokens": args.get("max_tokens"),
        "cache": args["cache"],
        "num_retries": args.get("num_retries"),
        "timeout_s": args.get("timeout_s"),
        "api_base": _public_base(args["api_base"]) if args.get("api_base") else None,
        "api_key_set": bool(api_key),
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if model == OFFLINE:
        if api_key or args.get("api_base"):
            raise validation_error("offline_takes_no_endpoint", "the offline model runs in the worker: "
                                   "give it no api_key or api_base")
        lm = make_lm(args.get("temperature"), args.get("max_tokens"), args["cache"])
        settings["num_retries"] = 0
        return LMConfig(OFFLINE, lm, settings, None, True)
    kwargs = {
        "temperature": args.get("temperature"),
        "max_tokens": args.get("max_tokens"),
        "cache": args["cache"],
        "num_retries": args.get("num_retries", 3),
    }
    for key, value in (("api_key", api_key), ("api_base", args.get("api_base")), ("timeout", args.get("timeout_s"))):
        if value is not None:
            kwargs[key] = value
    try:
        lm = dspy.LM(model, **kwargs)
    except (ValueError, TypeError, dspy.LMError) as exc:
        raise validation_error("bad_lm_settings", f"DSPy refused these LM settings: {exc}"[:1000],
                               model=model) from None
    settings.setdefault("num_retries", kwargs["num_retries"])
    return LMConfig(model, lm, settings, args.get("timeout_s"), False)


def resolve(scope: Scope, global_scope: Scope) -> LMConfig:
    """The LM a call in ``scope`` uses: its own, else the global one, else a clear error."""
    config = scope.lm or global_scope.lm
    if config is None:
        raise BridgeError(
            "validation", "no_lm_configured",
            "no LM is configured for this session or globally; send configure_lm first, e.g. "
            "{\"command\": \"configure_lm\", \"args\": {\"model\": \"openai/gpt-4o-mini\", \"api_key\": \"...\"}} "
            "or {\"model\": \"offline\"} for the built-in deterministic model",
            {"hint": "configure_lm"},
        )
    return config


def deadline_step(remaining: float | None) -> float | None:
    """A client timeout that ends no earlier than ``remaining`` seconds from now, or None (no deadline to keep)."""
    if remaining is None or remaining > DEADLINE_STEPS[-1]:
        return None
    return DEADLINE_STEPS[min(bisect.bisect_left(DEADLINE_STEPS, remaining), len(DEADLINE_STEPS) - 1)]


def for_deadline(config: LMConfig, remaining: float | None):
    """The LM to call with ``remaining`` seconds left: its timeout no later than the deadline (rounded up)."""
    step = None if config.local else deadline_step(remaining)
    if step is None:
        return config.lm
    if config.timeout_s is not None and config.timeout_s <= step:
        return config.lm
    with config.lock:
        lm = config.variants.get(step)
        if lm is None:
            lm = config.variants[step] = config.lm.copy(timeout=step)
        return lm


class CountingTracker(UsageTracker):
    """DSPy's usage tracker, keeping an (empty) entry for a call that reported no usage.

    One tracker serves every thread of a request: DSPy's ParallelExecutor
    (Evaluate, the optimisers) deep-copies the tracker into each of its
    threads and never merges the copies back, so their calls would be lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> "CountingTracker":
        return self

    def add_usage(self, lm: str, usage_entry: dict) -> None:
        entry = self._flatten_usage_entry(usage_entry or {})
        with self._lock:
            self.usage_data[lm].append(entry)


def usage_of(tracker) -> dict:
    """DSPy's usage tracker -> ``{model: {prompt_tokens, completion_tokens, total_tokens, lm_calls}}``."""
    report = {}
    for model, entries in tracker.usage_data.items():
        counters = {"lm_calls": len(entries)}
        for entry in entries:
            for key, value in entry.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[key] = counters.get(key, 0) + value
        report[model] = counters
    return report
