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
import math
import threading
from urllib.parse import urlsplit, urlunsplit

from dspy.utils.usage_tracker import UsageTracker

from ... import lmcalls
from ...errors import BridgeError, validation_error
from ...redaction import register_secret
from . import metering, scripted
from .offline import make_lm
from .state import LMConfig, Scope

OFFLINE = "offline"
SCRIPTED = "scripted"
LOCAL = (OFFLINE, SCRIPTED)  # models that run in the worker
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
    rate_limit = check_rate_limit(args.get("rate_limit"))
    check_answers(model, args.get("answers"))
    settings = {
        "temperature": args.get("temperature"),
        "max_tokens": args.get("max_tokens"),
        "cache": args["cache"],
        "num_retries": args.get("num_retries"),
        "timeout_s": args.get("timeout_s"),
        "api_base": _public_base(args["api_base"]) if args.get("api_base") else None,
        "api_key_set": bool(api_key),
        "rate_limit": rate_limit,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if model in LOCAL:
        if api_key or args.get("api_base"):
            raise validation_error("offline_takes_no_endpoint", f"the {model} model runs in the worker: "
                                   "give it no api_key or api_base")
        if model == SCRIPTED:
            lm = scripted.make_lm(args["answers"], args.get("temperature"), args.get("max_tokens"))
            settings.update(answers=len(args["answers"]), cache=False)  # two equal prompts get two answers
        else:
            lm = make_lm(args.get("temperature"), args.get("max_tokens"), args["cache"])
        settings["num_retries"] = 0
        metering.attach(lm, lmcalls.Policy(model, rate_limit, 0))
        return LMConfig(model, lm, settings, None, True)
    retries = args.get("num_retries", 3)
    kwargs = {
        "temperature": args.get("temperature"),
        "max_tokens": args.get("max_tokens"),
        "cache": args["cache"],
        # With a rate limit the bridge retries, asking admission before each attempt (metering).
        "num_retries": 0 if rate_limit else retries,
    }
    for key, value in (("api_key", api_key), ("api_base", args.get("api_base")), ("timeout", args.get("timeout_s"))):
        if value is not None:
            kwargs[key] = value
    try:
        lm = dspy.LM(model, **kwargs)
    except (ValueError, TypeError, dspy.LMError) as exc:
        raise validation_error("bad_lm_settings", f"DSPy refused these LM settings: {exc}"[:1000],
                               model=model) from None
    settings.setdefault("num_retries", retries)
    metering.attach(lm, lmcalls.Policy(model, rate_limit, retries if rate_limit else 0))
    return LMConfig(model, lm, settings, args.get("timeout_s"), False)


def check_rate_limit(rate_limit: dict | None) -> dict | None:
    """``rate_limit`` (its keys and values checked by the schema) needs a request or a token limit."""
    if rate_limit is None:
        return None
    if "requests_per_minute" not in rate_limit and "tokens_per_minute" not in rate_limit:
        raise validation_error("invalid_args", "args.rate_limit: give requests_per_minute or tokens_per_minute "
                               "(burst alone limits nothing)", path="args.rate_limit", reason="anyOf")
    return dict(rate_limit)


def check_answers(model: str, answers: list | None) -> None:
    """``answers`` belong to the scripted model, which needs them."""
    if model == SCRIPTED and answers is None:
        raise validation_error("invalid_args", "args.answers: the scripted model answers each LM call with the next "
                               "of these maps; give at least one", path="args.answers", reason="required")
    if model != SCRIPTED and answers is not None:
        raise validation_error("invalid_args", f"args.answers: only the scripted model takes answers (this is "
                               f"{model!r})", path="args.answers", reason="scripted_only")


def resolve(scope: Scope, global_scope: Scope) -> LMConfig:
    """The LM a call in ``scope`` uses: its own, else the global one, else a clear error."""
    config = scope.lm or global_scope.lm
    if config is None:
        raise BridgeError(
            "validation", "no_lm_configured",
            # Neutral words: every client shows this, and says how to call configure_lm in its own terms
            # (details.hint names the command; the Elixir client rewrites the advice).
            "no LM is configured for this session or globally: configure one first (configure_lm with a model "
            "such as 'openai/gpt-4o-mini' and its api_key, or 'offline', the built-in deterministic model)",
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


def with_options(lm, options: dict | None):
    """``lm`` for one run with per-call options (``execute_program``'s ``lm``): a copy that holds them, so
    the request body is what plain DSPy sends for ``program(..., config=options)``; never the scope's LM."""
    return lm.copy(**options) if options else lm


class CountingTracker(UsageTracker):
    """DSPy's usage tracker, keeping an (empty) entry for a call that reported no usage.

    One tracker serves every thread of a request: DSPy's ParallelExecutor
    (Evaluate, the optimisers) deep-copies the tracker into each of its
    threads and never merges the copies back, so their calls would be lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.costs: dict[str, float | None] = {}  # model -> summed price, None while DSPy priced no call

    def __deepcopy__(self, memo) -> "CountingTracker":
        return self

    def add_usage(self, lm: str, usage_entry: dict) -> None:
        entry = self._flatten_usage_entry(usage_entry or {})
        with self._lock:
            self.usage_data[lm].append(entry)

    def add_cost(self, lm: str, cost) -> None:
        """DSPy's price of one call (``metering``), or None when it has none for the model."""
        with self._lock:
            total = self.costs.get(lm)
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost):
                total = (total or 0.0) + cost
            self.costs[lm] = total


def usage_of(tracker) -> dict:
    """DSPy's usage tracker -> ``{model: {lm_calls, prompt_tokens, completion_tokens, total_tokens, cost_usd}}``.

    ``cost_usd`` sums DSPy's price of each call, and stays null when DSPy priced none of the model's calls.
    """
    report = {}
    costs = getattr(tracker, "costs", {})
    for model, entries in tracker.usage_data.items():
        counters = {"lm_calls": len(entries)}
        for entry in entries:
            for key, value in entry.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[key] = counters.get(key, 0) + value
        counters["cost_usd"] = costs.get(model)
        report[model] = counters
    return report
