"""dspy.Module classes written with bridge.sdk's ``@program``, as a user would, for tests/test_sdk_programs.py.

Exposed with ``--expose tests.support.sdk_programs`` (served as
``sdk_programs.<Class>``); the parity test also runs them in plain DSPy, in
its own process. ``MultiHop`` is DSPy's own multi-hop example, its search a
callback to the client inside a worker (and ``local_search`` outside one, the
same passages); the others cover typed hints and every way a class can
misbehave.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Literal, TypedDict

import dspy

from bridge.sdk import Context, Schema, command, program


def local_search(query: str) -> list[str]:
    """What the tests' search callback answers, also used where no worker runs the module."""
    return [f"passage {i} about {query}" for i in range(2)]


@program
class MultiHop(dspy.Module):
    """Answer a question after several searches, each query written from what was found so far.

    Args:
        hops: how many searches before answering.
    """

    def __init__(self, hops: Annotated[int, Schema(minimum=1, maximum=5)] = 2):
        super().__init__()
        self.hops = hops
        self.generate_query = dspy.ChainOfThought("context, question -> search_query")
        self.generate_answer = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question: str, ctx: Context | None = None):
        """Search, then answer.

        Args:
            question: what to answer.
        """
        context: list[str] = []
        for hop in range(self.hops):
            query = self.generate_query(context=context, question=question).search_query
            found = ctx.callback("search", {"query": query}) if ctx is not None else local_search(query)
            context = context + list(found)
            if ctx is not None:
                ctx.progress(hop + 1, self.hops, stage="search")
                ctx.state["searches"] = ctx.state.get("searches", 0) + 1
        answer = self.generate_answer(context=context, question=question)
        return dspy.Prediction(context=context, answer=answer.answer)


@command
def searches(ctx: Context) -> dict:
    """This module's state in the session: a command and the module's programs share it."""
    return dict(ctx.state)


class Tone(enum.Enum):
    PLAIN = "plain"
    WARM = "warm"


@dataclasses.dataclass
class Customer:
    name: str
    tier: Literal["free", "pro"] = "free"


class Reply(TypedDict):
    reply: str
    urgent: bool


@program(name="Support")
class SupportReply(dspy.Module):
    """Write a reply to a support ticket."""

    def __init__(self, tone: Tone = Tone.PLAIN, products: list[str] | None = None):
        super().__init__()
        self.tone, self.products = tone, products or []
        self.respond = dspy.Predict(dspy.make_signature("ticket, customer, tone -> reply, urgent: bool"))

    def forward(self, ticket: str, customer: Customer) -> Reply:
        assert isinstance(customer, Customer) and isinstance(self.tone, Tone)  # the hints' types arrived
        return self.respond(ticket=ticket, customer=f"{customer.name} ({customer.tier})", tone=self.tone.value)


@program
class Slow(dspy.Module):
    """Wait (cooperatively) before answering; stops at once when its request is cancelled."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str, seconds: float = 30.0, ctx: Context | None = None):
        if ctx is not None:
            ctx.wait(seconds)
        return self.answer(question=question)


@program
class Picky(dspy.Module):
    """Refuses some inits (a ValueError) and some inputs (a RuntimeError in forward)."""

    def __init__(self, size: int = 1):
        super().__init__()
        if size > 3:
            raise ValueError(f"size must be at most 3, got {size}")
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str):
        if question == "boom":
            raise RuntimeError("the program failed")
        if question == "nothing":
            return 42
        return self.answer(question=question)


@program
class Empty(dspy.Module):
    """Has no predictors: nothing DSPy could run or tune."""

    def forward(self, question: str):
        return dspy.Prediction(answer=question)


class NotExposed(dspy.Module):
    """Defined in an exposed module without @program: no client may build it."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str):
        return self.answer(question=question)
