"""Commands of an exposed Python module (bridge.sdk), for the generated Elixir bindings' tests."""

from bridge.sdk import command


@command
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


@command
def scale(value: float, factor: float = 2.0, label: str | None = None) -> dict:
    """Scale a value, and say what it is."""
    return {"value": value * factor, "label": label}


@command
def wait(seconds: float, timeout: float = 1.0) -> float:
    """An argument named as a request option."""
    return min(seconds, timeout)
