"""The error-category table and the exceptions that carry a category to the wire.

The table itself is data in ``protocol/errors.json`` (shipped in the wheel as
``bridge._protocol``), read by both the worker and the Elixir client. Code
raises ``BridgeError(category, code, message, details)``; the category's
severity, recovery and retryability always come from the table, so the two
sides cannot drift.

Developer mistakes (registering a command twice, a schema that is not a map)
raise ``RegistrationError``, which is not a ``BridgeError`` and never reaches
the wire: it stops the worker at start-up, where a developer sees it.
"""

from __future__ import annotations

from functools import lru_cache

from .contract import read_json


class RegistrationError(Exception):
    """A backend or the core registered something wrong (a programming error)."""


@lru_cache(maxsize=1)
def table() -> dict:
    """The whole table: ``{"version", "severities", "recoveries", "categories"}``."""
    data = read_json("errors.json")
    for name, row in data["categories"].items():
        if row["severity"] not in data["severities"] or row["recovery"] not in data["recoveries"]:
            raise RegistrationError(f"error table row {name!r} names an unknown severity or recovery")
    return data


def categories() -> dict:
    return table()["categories"]


class BridgeError(Exception):
    """A failure with a wire category. ``code`` is a short snake_case reason."""

    def __init__(self, category: str, code: str, message: str, details: dict | None = None) -> None:
        if category not in categories():
            raise RegistrationError(f"unknown error category {category!r}")
        super().__init__(message)
        self.category = category
        self.code = code
        self.message = message
        self.details = details or {}

    def __repr__(self) -> str:
        return f"BridgeError({self.category!r}, {self.code!r}, {self.message!r})"

    def to_wire(self) -> dict:
        row = categories()[self.category]
        return {
            "category": self.category,
            "code": self.code,
            "message": self.message,
            "severity": row["severity"],
            "recovery": row["recovery"],
            "retryable": row["retryable"],
            "details": self.details,
        }


def protocol_error(code: str, message: str, **details) -> BridgeError:
    return BridgeError("protocol", code, message, details)


def validation_error(code: str, message: str, **details) -> BridgeError:
    return BridgeError("validation", code, message, details)


def not_found(code: str, message: str, **details) -> BridgeError:
    return BridgeError("not_found", code, message, details)


def overloaded(code: str, message: str, **details) -> BridgeError:
    return BridgeError("overloaded", code, message, details)


def leaves(exc: BaseException) -> list[BaseException]:
    """The failures inside a (nested) exception group, in order; ``[exc]`` for any other exception."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for child in exc.exceptions for leaf in leaves(child)]


def combined(errors: list[BridgeError]) -> BridgeError:
    """One wire error for several failures (an exception group): the first that is not ``internal`` speaks
    for the category, and every failure's own message is kept, never "unhandled errors (2 sub-exceptions)"."""
    lead = next((e for e in errors if e.category != "internal"), errors[0])
    others = [e for e in errors if e is not lead]
    messages = [lead.message, *(m for m in dict.fromkeys(e.message for e in others) if m != lead.message)]
    message = messages[0] if len(messages) == 1 else f"{messages[0]} (and: {'; '.join(messages[1:])})"
    details = {**lead.details, "errors": [{"category": e.category, "code": e.code, "message": e.message[:500]}
                                          for e in errors[:8]]}
    return BridgeError(lead.category, lead.code, message[:2000], details)
