"""Streaming one program call as ``chunk`` events (imported after the gate).

DSPy streams through an anyio memory stream in its settings (``send_stream``):
the LM layer pushes each provider chunk into it from the thread that runs the
program, and ``StreamListener``s turn chunks into per-field text. This is what
``dspy.streamify`` does, rebuilt here for one reason: ``streamify`` runs sync
programs through ``asyncify``, whose thread limiter is a process-wide object
created in the first event loop and then shared by every later loop, while
each streaming request here runs its own loop on its own handler thread.
So each call gets its own loop (``anyio.run`` on the handler thread), its own
listeners and its own worker thread; nothing is shared between calls.
"""

from __future__ import annotations

from typing import Callable

import anyio
import dspy
from dspy.streaming import StreamListener
from dspy.streaming.messages import StreamResponse
from dspy.streaming.streaming_listener import find_predictor_for_stream_listeners

BUFFER = 16  # chunks in flight between the LM thread and the loop


def listeners_for(module) -> list[StreamListener]:
    """One listener per output field of every predictor in the module."""
    return [
        StreamListener(signature_field_name=field, predict=predictor, predict_name=name)
        for name, predictor in module.named_predictors()
        for field in predictor.signature.output_fields
    ]


def run(module, inputs: dict, on_chunk: Callable[[dict], None], check: Callable[[], None]):
    """Call ``module(**inputs)`` in this thread's DSPy context, reporting each text chunk; returns the Prediction.

    ``on_chunk({"field", "text", "predictor", "last"})`` is called on this
    thread, in order. ``check()`` runs before each chunk is reported and may
    raise to stop the call (the LM thread then fails on its next send).
    """
    listeners = listeners_for(module)
    by_predictor = find_predictor_for_stream_listeners(module, listeners)
    outcome: dict = {}

    def report(response: StreamResponse) -> None:
        try:
            check()
            on_chunk({"field": response.signature_field_name, "text": response.chunk,
                      "predictor": response.predict_name, "last": bool(response.is_last_chunk)})
        except BaseException as exc:
            outcome["stopped"] = exc  # the reason wins over the LM thread's failure that follows
            raise

    async def main():
        send, receive = anyio.create_memory_object_stream(BUFFER)

        async def produce():
            async with send:
                with dspy.context(send_stream=send, stream_listeners=listeners):
                    outcome["prediction"] = await anyio.to_thread.run_sync(lambda: module(**inputs))

        async with anyio.create_task_group() as group, receive:
            group.start_soon(produce)
            async for chunk in receive:
                if isinstance(chunk, dspy.Prediction):  # not sent by us, but harmless to skip
                    continue
                for listener in by_predictor.get(getattr(chunk, "predict_id", None), ()):
                    response = listener.receive(chunk)
                    if response is not None:
                        report(response)
        for listener in listeners:
            final = listener.finalize()
            if final is not None:
                report(final)
        return outcome["prediction"]

    try:
        return anyio.run(main)
    except BaseException as exc:
        if "stopped" in outcome:
            raise outcome["stopped"] from None
        leaf = _single(exc)
        if leaf is not None:
            raise leaf from None
        raise


def _single(exc: BaseException) -> BaseException | None:
    """The one failure inside a (nested) exception group, so callers see the LM's own error."""
    if not hasattr(exc, "exceptions"):
        return None
    leaves, pending = [], [exc]
    while pending:
        current = pending.pop()
        children = getattr(current, "exceptions", None)
        if children is None:
            leaves.append(current)
        else:
            pending.extend(children)
    return leaves[0] if len(leaves) == 1 else None
