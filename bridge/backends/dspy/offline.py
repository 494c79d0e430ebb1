"""The built-in ``offline`` LM: a DSPy engine around ``offline_model`` (imported after the gate).

``make_lm`` returns a real ``dspy.LM`` whose engine answers locally, so every
DSPy path runs as with a remote model: adapters format and parse, usage is
counted, streaming goes through DSPy's listeners, optimizers call it. It
never touches the network and needs no key. It is used only when a client
asks for it with ``configure_lm {"model": "offline"}``. ``LocalEngine`` serves
any model that answers in the worker (``scripted`` too): it is given the
function that writes the answer to a conversation.
"""

from __future__ import annotations

from typing import Callable

import dspy
from dspy.lm15 import Message, Response, StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, TextPart, Usage

from . import offline_model

MODEL = "offline"
STREAM_PIECE_CHARS = 6  # small pieces, so a short answer still streams as several chunks


def _messages(request) -> list[dict]:
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


class LocalEngine:
    """``complete(Request) -> Response`` and ``stream(Request)``: the engine contract of DSPy 3.4.

    ``answer(messages) -> text`` writes the reply (``messages``: ``[{"role", "content"}]``);
    tokens are counted as words.
    """

    def __init__(self, answer: Callable[[list[dict]], str] = offline_model.answer, model: str = MODEL) -> None:
        self.answer = answer
        self.model = model

    def complete(self, request) -> Response:
        messages = _messages(request)
        text = self.answer(messages)
        prompt_tokens = sum(offline_model.count_tokens(m["content"]) for m in messages)
        completion_tokens = offline_model.count_tokens(text)
        return Response(
            id=None, model=self.model, message=Message.assistant([TextPart(text)]), finish_reason="stop",
            usage=Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
        )

    def stream(self, request):
        response = self.complete(request)
        text = response.message.text or ""
        yield StreamStartEvent(model=self.model)
        for i in range(0, len(text), STREAM_PIECE_CHARS):
            yield StreamDeltaEvent(delta=TextDelta(text=text[i:i + STREAM_PIECE_CHARS]))
        yield StreamEndEvent(finish_reason="stop", usage=response.usage)

    def close(self) -> None:
        pass


class AsyncLocalEngine:
    def __init__(self, sync: LocalEngine) -> None:
        self.sync = sync

    async def complete(self, request) -> Response:
        return self.sync.complete(request)

    async def stream(self, request):
        for event in self.sync.stream(request):
            yield event

    async def aclose(self) -> None:
        pass


def make_lm(temperature=None, max_tokens=None, cache: bool = False, engine: LocalEngine | None = None) -> "dspy.LM":
    """A ``dspy.LM`` answered in the worker: by the offline model, or by ``engine``."""
    engine = engine or LocalEngine()
    return dspy.LM(engine.model, temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=0,
                   engine=engine, async_engine=AsyncLocalEngine(engine))
