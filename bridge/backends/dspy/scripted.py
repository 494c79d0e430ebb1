"""The ``scripted`` LM: each call answered with the next of the client's answers (imported after the gate).

``configure_lm {"model": "scripted", "answers": [{field: value, ...}, ...]}``
is DSPy's ``DummyLM`` idea kept in the worker, so an application's tests can
run its real programs with chosen outputs and no provider: every LM call of
the scope that uses this LM takes the next answer map (in order, shared by
concurrent calls and by every copy of the LM), and gets it written in the
format of the adapter that called, read from the prompt as any LM reads it
(ChatAdapter's ``[[ ## field ## ]]`` blocks, a JSON object for JSONAdapter,
``<field>`` tags for XMLAdapter), each value formatted by that DSPy adapter as
DummyLM formats it. An answer is used as given: a field it lacks fails
parsing as a real model's answer would. When none is left, the call fails with
``execution/scripted_answers_exhausted``. The response cache is never used:
two identical prompts get two answers.
"""

from __future__ import annotations

import threading

import dspy
from dspy.adapters.chat_adapter import FieldInfoWithName

from ...errors import BridgeError
from . import offline, offline_model

MODEL = "scripted"
COMPLETED = "[[ ## completed ## ]]"  # how ChatAdapter asks a model to end its answer


class Script:
    """The answers of one ``configure_lm``, handed out in order."""

    def __init__(self, answers: list[dict]) -> None:
        self.answers = [dict(answer) for answer in answers]
        self.used = 0
        self._lock = threading.Lock()

    def answer(self, messages: list[dict]) -> str:
        """The next answer, written for the adapter whose prompt ``messages`` is; raises when none is left."""
        with self._lock:
            if self.used >= len(self.answers):
                raise BridgeError("execution", "scripted_answers_exhausted",
                                  f"the scripted LM has given all {len(self.answers)} of its answers; configure_lm "
                                  "with model 'scripted' again with the answers the next LM calls need",
                                  {"answers": len(self.answers)})
            values = self.answers[self.used]
            self.used += 1
        return render(values, messages)


def render(values: dict, messages: list[dict]) -> str:
    """``values`` as the adapter that wrote ``messages`` expects an answer (as DSPy's DummyLM writes it)."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    fields = {FieldInfoWithName(name=name, info=dspy.OutputField()): value for name, value in values.items()}
    adapter = offline_model.adapter_of(system, last)
    if adapter == "json":
        return dspy.JSONAdapter().format_field_with_value(fields, role="assistant")
    if adapter == "xml":
        return dspy.XMLAdapter().format_field_with_value(fields)
    text = dspy.ChatAdapter().format_field_with_value(fields)
    return f"{text}\n\n{COMPLETED}" if text else COMPLETED


def make_lm(answers: list[dict], temperature=None, max_tokens=None) -> "dspy.LM":
    engine = offline.LocalEngine(Script(answers).answer, MODEL)
    return offline.make_lm(temperature, max_tokens, cache=False, engine=engine)
