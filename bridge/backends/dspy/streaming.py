"""Streaming one program call as ``chunk`` events (imported after the gate).

DSPy streams through an anyio memory stream in its settings (``send_stream``):
the LM layer pushes each provider chunk into it from the thread that runs the
program, tagged with the id of the predictor that called. This is what
``dspy.streamify`` does, rebuilt here for one reason: ``streamify`` runs sync
programs through ``asyncify``, whose thread limiter is a process-wide object
created in the first event loop and then shared by every later loop, while
each streaming request here runs its own loop on its own handler thread.
So each call gets its own loop (``anyio.run`` on the handler thread), its own
splitters and its own worker thread; nothing is shared between calls.

Chunks carry field text only, and each field's last chunk says ``last:
true``: the answer of each predictor goes through the splitter of its
adapter's format (``splitters``: chat, json, xml). DSPy's own
``StreamListener`` lets markers, JSON syntax and the next field into its
chunks when a server sends a few characters per event, and then may never
mark a last chunk. A TwoStepAdapter program cannot stream (its first answer
is free text; the fields exist only after a second, extracting call): that
is a ``validation`` error before any LM request.
"""

from __future__ import annotations

from typing import Callable

import anyio
import dspy

from ...errors import leaves, validation_error
from .splitters import SPLITTERS

BUFFER = 16  # chunks in flight between the LM thread and the loop


def answer_format(adapter) -> str:
    """The splitter an adapter's answers need; raises ``validation`` for one whose answers cannot stream."""
    if adapter is None:
        return "chat"
    if isinstance(adapter, dspy.TwoStepAdapter):
        raise validation_error(
            "stream_not_supported", "args.stream: a two_step program cannot stream: its LM answers in free text and "
            "a second LM call extracts the fields, so no field's text exists before the end; call it without "
            "stream, or use the chat, json or xml adapter", path="args.stream", adapter="two_step")
    for kind, cls in (("xml", dspy.XMLAdapter), ("json", dspy.JSONAdapter), ("chat", dspy.ChatAdapter)):
        if isinstance(adapter, cls):  # XMLAdapter and JSONAdapter are ChatAdapters: the subclasses first
            return kind
    raise validation_error("stream_not_supported", f"args.stream: {type(adapter).__name__} programs cannot stream",
                           path="args.stream")


def run(module, inputs: dict, on_chunk: Callable[[dict], None], check: Callable[[], None], adapter=None):
    """Call ``module(**inputs)`` in this thread's DSPy context, reporting each text chunk; returns the Prediction.

    ``on_chunk({"field", "text", "predictor", "last"})`` is called on this
    thread, in order. ``check()`` runs before each chunk is reported and may
    raise to stop the call (the LM thread then fails on its next send).
    """
    splitter = SPLITTERS[answer_format(adapter)]
    outcome: dict = {}

    def report(predictor: str, field: str, text: str, last: bool) -> None:
        try:
            check()
            on_chunk({"field": field, "text": text, "predictor": predictor, "last": last})
        except BaseException as exc:
            outcome["stopped"] = exc  # the reason wins over the LM thread's failure that follows
            raise

    predictors = {id(predictor): (name, predictor.signature.output_fields)
                  for name, predictor in module.named_predictors()}
    splitters: dict = {}  # predictor id -> the splitter of its current LM call

    def receive(chunk) -> None:
        predict_id = getattr(chunk, "predict_id", None)
        if predict_id not in predictors:
            return
        try:
            choice = chunk.choices[0]
        except (AttributeError, IndexError):
            return
        split = splitters.get(predict_id)
        if split is None:
            name, fields = predictors[predict_id]
            split = splitters[predict_id] = splitter(fields, lambda f, t, last, name=name: report(name, f, t, last))
        text = getattr(choice.delta, "content", None)
        if text:
            split.feed(text)
        if getattr(choice, "finish_reason", None) is not None:  # this call's answer is complete
            del splitters[predict_id]  # a predictor called again (ReAct, BestOfN, a loop) starts afresh
            split.close()

    async def main():
        send, receive_stream = anyio.create_memory_object_stream(BUFFER)

        async def produce():
            async with send:
                with dspy.context(send_stream=send, stream_listeners=[]):
                    outcome["prediction"] = await anyio.to_thread.run_sync(lambda: module(**inputs))

        async with anyio.create_task_group() as group, receive_stream:
            group.start_soon(produce)
            async for chunk in receive_stream:
                if not isinstance(chunk, dspy.Prediction):
                    receive(chunk)
        for split in list(splitters.values()):  # a stream that ended without its end event
            split.close()
        return outcome["prediction"]

    try:
        return anyio.run(main)
    except BaseException as exc:
        if "stopped" in outcome:
            raise outcome["stopped"] from None
        leaf = _single(exc)
        if leaf is not None:
            raise leaf from None
        raise  # several failures: the classifiers keep every one's message (errors.combined)


def _single(exc: BaseException) -> BaseException | None:
    """The one failure inside a (nested) exception group, so callers see the LM's own error."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    found = leaves(exc)
    return found[0] if len(found) == 1 else None
