"""SDK commands that use the session's LM directly, as an operator's own code could (tests/test_lm_admission.py).

Exposed with ``--expose tests.support.lm_commands`` (served as
``lm_commands.<name>``). No DSPy program runs: the command calls the
``dspy.LM`` that ``configure_lm`` set for the request's scope, so whatever the
bridge does for LM calls (admission, ``lm_call`` events) must happen at the LM
layer itself.
"""

from __future__ import annotations

import threading

from bridge.backends.dspy.state import scope_of
from bridge.sdk import BridgeError, Context, command


def _lm(ctx: Context):
    config = scope_of(ctx.store).lm or scope_of(ctx.global_store).lm
    if config is None:
        raise BridgeError("validation", "no_lm_configured", "configure_lm first")
    return config.lm


@command
def ask(prompt: str, ctx: Context) -> str:
    """Send one prompt to the scope's LM and return its text."""
    return _lm(ctx)(prompt)[0]


@command
def ask_from_own_thread(prompt: str, ctx: Context) -> dict:
    """The same from a thread the command starts (where no request is bound); reports how it went."""
    lm, outcome = _lm(ctx), {}

    def call() -> None:
        try:
            outcome["text"] = lm(prompt)[0]
        except Exception as exc:  # noqa: BLE001 -- the outcome is the answer
            cause = exc.__cause__ if isinstance(exc.__cause__, BridgeError) else exc
            outcome["error"] = {"category": getattr(cause, "category", None), "code": getattr(cause, "code", None)}

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(30)
    return outcome


@command
def ask_each(prompts: list[str], ctx: Context) -> list[str]:
    """Send each prompt in turn, never looking at the request between them (as code that cannot be interrupted)."""
    lm = _lm(ctx)
    return [lm(prompt)[0] for prompt in prompts]
