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
true``. For ChatAdapter programs (the default) the text is split on the
``[[ ## field ## ]]`` markers here: DSPy's ``StreamListener`` lets markers
into its chunks when a server sends a few characters per event (one per
event, as PyPI's mockllm does, gives an ``answer`` of "...\\n\\n[[ ##
completed ## ]]") and then never marks a last chunk. JSON and XML programs
keep DSPy's listeners, with the missing ``last`` added at the end.
"""

from __future__ import annotations

import re
from typing import Callable

import anyio
import dspy
from dspy.streaming import StreamListener
from dspy.streaming.streaming_listener import find_predictor_for_stream_listeners

BUFFER = 16  # chunks in flight between the LM thread and the loop
MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")
# The tail of a text that may still grow into a marker: "[", "[[ #", "[[ ## answ", "[[ ## answer ## ]"...
PARTIAL_MARKER = re.compile(r"\[(?:\[(?: (?:#(?:#(?: (?:\w+(?: (?:#(?:#(?: (?:\])?)?)?)?)?)?)?)?)?)?)?\Z")
COMPLETED = "completed"


class FieldSplitter:
    """ChatAdapter's answer text, fed as it streams -> ``emit(field, text, last)`` with field text only.

    Text before the first marker and between markers of fields not listed is
    dropped; a field's leading and trailing whitespace is dropped, as the
    adapter's parser strips values, so the pieces of a field join to exactly
    the parsed value of a ``str`` field.
    """

    def __init__(self, fields, emit: Callable[[str, str, bool], None]) -> None:
        self.fields = set(fields)
        self.emit = emit
        self.field: str | None = None
        self.pending = ""  # text of the current field not yet sent
        self.started = False  # the current field's leading whitespace is behind us

    def feed(self, text: str) -> None:
        self.pending += text
        while True:
            found = MARKER.search(self.pending)
            if found is None:
                break
            self._send(self.pending[:found.start()], final=True)
            name = found.group(1)
            self.field = name if name in self.fields else None
            self.pending, self.started = self.pending[found.end():], False
        hold = PARTIAL_MARKER.search(self.pending)
        cut = hold.start() if hold else len(self.pending)
        body = self.pending[:cut]
        safe = body.rstrip()  # trailing whitespace waits: it may end the field
        self._send(safe, final=False)
        self.pending = self.pending[len(safe):]

    def close(self) -> None:
        """The answer ended: the open field's rest goes out as its last chunk."""
        self._send(self.pending, final=True)
        self.field, self.pending = None, ""

    def _send(self, text: str, final: bool) -> None:
        if self.field is None:
            return
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if final:
            text = text.rstrip()
        if text or final:
            self.emit(self.field, text, final)
        if final:
            self.field = None


def run(module, inputs: dict, on_chunk: Callable[[dict], None], check: Callable[[], None], adapter=None):
    """Call ``module(**inputs)`` in this thread's DSPy context, reporting each text chunk; returns the Prediction.

    ``on_chunk({"field", "text", "predictor", "last"})`` is called on this
    thread, in order. ``check()`` runs before each chunk is reported and may
    raise to stop the call (the LM thread then fails on its next send).
    """
    predictors = list(module.named_predictors())
    chat = adapter is None or type(adapter) is dspy.ChatAdapter
    outcome: dict = {}
    open_fields: dict[tuple[str, str], bool] = {}  # (predictor, field) -> its last chunk was sent

    def report(predictor: str, field: str, text: str, last: bool) -> None:
        try:
            check()
            open_fields[(predictor, field)] = last
            on_chunk({"field": field, "text": text, "predictor": predictor, "last": last})
        except BaseException as exc:
            outcome["stopped"] = exc  # the reason wins over the LM thread's failure that follows
            raise

    if chat:
        splitters = {
            id(predictor): FieldSplitter(predictor.signature.output_fields,
                                         lambda f, t, last, name=name: report(name, f, t, last))
            for name, predictor in predictors
        }
        listeners, by_predictor = [], {}
    else:
        splitters = {}
        # allow_reuse: a pipeline's repeated step calls the same predictor once per repetition.
        listeners = [StreamListener(signature_field_name=field, predict=predictor, predict_name=name,
                                    allow_reuse=True)
                     for name, predictor in predictors for field in predictor.signature.output_fields]
        by_predictor = find_predictor_for_stream_listeners(module, listeners)

    def receive(chunk) -> None:
        predict_id = getattr(chunk, "predict_id", None)
        splitter = splitters.get(predict_id)
        if splitter is not None:
            try:
                text = chunk.choices[0].delta.content
            except (AttributeError, IndexError):
                return
            if text:
                splitter.feed(text)
            return
        for listener in by_predictor.get(predict_id, ()):
            response = listener.receive(chunk)
            if response is not None:
                report(response.predict_name, response.signature_field_name, response.chunk,
                       bool(response.is_last_chunk))

    async def main():
        send, receive_stream = anyio.create_memory_object_stream(BUFFER)

        async def produce():
            async with send:
                with dspy.context(send_stream=send, stream_listeners=listeners):
                    outcome["prediction"] = await anyio.to_thread.run_sync(lambda: module(**inputs))

        async with anyio.create_task_group() as group, receive_stream:
            group.start_soon(produce)
            async for chunk in receive_stream:
                if not isinstance(chunk, dspy.Prediction):
                    receive(chunk)
        for splitter in splitters.values():
            splitter.close()
        for listener in listeners:
            final = listener.finalize()
            if final is not None:
                report(final.predict_name, final.signature_field_name, final.chunk, bool(final.is_last_chunk))
        for (predictor, field), last in list(open_fields.items()):
            if not last:
                report(predictor, field, "", True)
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
