"""Keeping secrets out of every output channel.

Two mechanisms, used wherever text leaves the worker (error replies, logs, log
events, stats): values registered as secrets (API keys a backend was given) are
replaced wherever they occur, and map entries whose key names a secret
(``api_key``, ``authorization``, ``token``...) are masked whatever their value.
"""

from __future__ import annotations

import re
import threading

MASK = "***"
# Whole names or suffixes: "api_key", "openai_api_key", "access_token", but not "max_tokens".
SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|authorization|secret|password|passwd|token|credentials?|bearer)$", re.I)
_MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secret(value) -> None:
    """Remember ``value`` so that it is masked in everything the worker writes."""
    global _secrets
    if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            _secrets = _secrets | {value}


def scrub_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub(value, depth: int = 0):
    """A copy of ``value`` with secret-named entries masked and secret values replaced."""
    if depth > 64:
        return MASK
    if isinstance(value, str):
        return scrub_text(value) if _secrets else value
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and SECRET_KEY.search(k) and v not in (None, "") else scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub(v, depth + 1) for v in value]
    return value
