"""DSPy's exceptions -> the wire's error categories (a classifier for the registry).

DSPy 3.4 raises a small hierarchy (``dspy.utils.exceptions``): LM errors
carry ``status``, ``provider`` and ``retry_after``; ``AdapterParseError``
means the LM's answer did not fit the signature. The classes are matched by
name along the exception's MRO, so this module imports nothing from DSPy and
is safe to call before (or without) the import gate.
"""

from __future__ import annotations

import re

from ...errors import BridgeError, combined, leaves

# Most specific first; the first class of the exception's MRO found here wins.
TABLE = {
    "AdapterParseError": ("output_parse", "output_parse"),
    "ContextWindowExceededError": ("lm_invalid_request", "context_window_exceeded"),
    "LMUnsupportedModelError": ("lm_invalid_request", "unsupported_model"),
    "LMInvalidRequestError": ("lm_invalid_request", "invalid_request"),
    "LMUnsupportedFeatureError": ("lm_invalid_request", "unsupported_feature"),
    "LMAuthError": ("lm_auth", "auth_failed"),
    "LMBillingError": ("lm_auth", "billing"),
    "LMNotConfiguredError": ("lm_auth", "no_credentials"),
    "LMConfigurationError": ("lm_invalid_request", "lm_configuration"),
    "LMRateLimitError": ("lm_rate_limit", "rate_limited"),
    "LMTimeoutError": ("lm_unavailable", "provider_timeout"),
    "LMServerError": ("lm_unavailable", "server_error"),
    "LMTransportError": ("lm_unavailable", "transport"),
    "LMStreamAssemblyError": ("lm_unavailable", "incomplete_stream"),
    "LMUnexpectedError": ("lm_unavailable", "unexpected_lm_failure"),
    "LMProviderError": ("lm_unavailable", "provider_error"),
    "LMError": ("lm_unavailable", "lm_error"),
    "DSPyError": ("execution", "dspy_error"),
}
MAX_MESSAGE = 2000

# DSPy words its remedies for a Python program ('pass api_key="..." to dspy.LM(...)',
# "dspy.configure(lm=...)"); the caller of a worker is another program, which
# configures its LM through the protocol's arguments. Each pattern is DSPy's (or
# its vendored lm15's) wording, said as the protocol says it.
_CALLER_TERMS = (
    (re.compile(r'pass api_key="\.\.\." to dspy\.LM\(\.\.\.\)'), "pass api_key to configure_lm"),
    (re.compile(r"\((?:api_key= on dspy\.LM|api_key, or RouterConfig api_keys)\)"),
     "(the api_key argument of configure_lm)"),
    (re.compile(r"\bset ((?:\w+ or )*\w+) or pass api_key=(?!\w)"),
     r"set \1 in the worker's environment or pass api_key to configure_lm"),
    (re.compile(r"\bpass api_key=(?!\w)"), "pass api_key to configure_lm"),
    (re.compile(r"RouterConfig\(api_keys=(?:\{[^}]*\}|\.\.\.)\)"), "the api_key argument of configure_lm"),
    (re.compile(r"`?dspy\.configure\(lm=(?:dspy\.LM\([^()]*\)|[^()]*)\)`?"), "configure_lm"),
    (re.compile(r"`?dspy\.LM\([^()]*\)`?"), "configure_lm"),
)


def in_caller_terms(message: str) -> str:
    """``message`` with DSPy's Python remedies said in the protocol's terms."""
    for pattern, replacement in _CALLER_TERMS:
        message = pattern.sub(replacement, message)
    return message


def _timed_out(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def classify(exc: BaseException) -> BridgeError | None:
    """The wire error for a DSPy exception, or None for anything else.

    A bridge error raised inside an LM attempt (admission refused, a scripted
    LM out of answers) reaches here wrapped by DSPy, raised ``from`` it: it keeps
    its own category.
    """
    if isinstance(exc.__cause__, BridgeError) and type(exc).__module__.startswith("dspy"):
        return exc.__cause__
    match = next((TABLE[c.__name__] for c in type(exc).__mro__
                  if c.__module__.startswith("dspy") and c.__name__ in TABLE), None)
    if match is None:
        return None
    category, code = match
    if code == "transport" and _timed_out(exc):
        code = "lm_read_timeout"  # the LM client's own timeout (timeout_s, or the request's deadline)
    details = {"exception": type(exc).__name__}
    for attr in ("status", "provider", "model", "retry_after", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            details["dspy_code" if attr == "code" else attr] = value
    message = in_caller_terms(str(exc) or type(exc).__name__)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return BridgeError(category, code, message, details)


def program_failure(exc: BaseException) -> BridgeError:
    """A non-DSPy exception raised while a program ran: the program's failure, not the worker's.

    An exception group (a task group's) becomes one error that keeps every
    failure's message, each classified on its own (``errors.combined``).
    """
    if isinstance(exc, BaseExceptionGroup):
        return combined([leaf if isinstance(leaf, BridgeError) else classify(leaf) or program_failure(leaf)
                         for leaf in leaves(exc)])
    return BridgeError("execution", "program_failed", in_caller_terms(f"{type(exc).__name__}: {exc}")[:MAX_MESSAGE],
                       {"exception": type(exc).__name__})
