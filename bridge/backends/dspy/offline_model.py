"""The ``offline`` model's mind: read a DSPy conversation, write a type-valid answer in the adapter's format.

It sees only what any LM sees, the messages. Every DSPy adapter spells out
the task: the input and output field names and, per output, what the value
must be (``offline_values`` reads each way of saying it). The model answers
in the format the adapter asked for:

* ChatAdapter: ``[[ ## field ## ]]`` sections; JSONAdapter: one JSON object;
  XMLAdapter: ``<field>`` elements, nested ones as its skeleton shows;
* TwoStepAdapter: its first call in free text (``field: value`` lines), and
  its extraction call copies those values verbatim, as it is told to.

Each value is valid for its type, and derived from the inputs: strings quote
the first input value, and every value is drawn from a generator seeded by a
hash of the whole prompt, so the same prompt always gets the same answer and
a different prompt (other inputs, instructions or demos) a different one.
From memory: when the inputs are exactly those of a demo in the prompt, the
demo's outputs are repeated (a few-shot program answers its training
questions as taught, which makes optimisation visible offline).

Pure Python: the engine in ``offline.py`` wraps it for DSPy.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re

from .offline_values import escape, from_schema, from_skeleton, render, schema_of_name, to_xml, value_for_note

HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
LISTED_FIELD = re.compile(r"^\s*\d+\. `(\w+)` \((.*?)\):", re.M)  # "1. `name` (type): desc"
NOTE = re.compile(r"^\{(\w+)\}(?: {8}# note: the value you produce (.*))?$")
JSON_NOTE = re.compile(r'^\s*"(\w+)": ("(?:[^"\\]|\\.)*"),?$')
XML_BLOCK = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
XML_NESTED = re.compile(r"^<(\w+)>(?!\n).*</\1>$")  # XMLAdapter's one-line skeleton of a nested field
NOT_SUPPLIED = "Not supplied for this particular example."
SUBJECT_CHARS = 60
JSON_TASK = "Outputs will be a JSON object"  # in JSONAdapter's system message
XML_TASK = "wrapped in XML tags"  # in XMLAdapter's last user message
TWO_STEP_TASK = "Your outputs must contain:"  # in TwoStepAdapter's system message (its first call)
TWO_STEP_EXTRACT = "Your job is to extract the fields from the text verbatim."


def blocks(text: str) -> dict[str, str]:
    """``[[ ## name ## ]]`` sections of a message -> ``{name: stripped text}`` (first occurrence wins)."""
    found: dict[str, str] = {}
    marks = list(HEADER.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        found.setdefault(mark.group(1), text[mark.end():end].strip())
    return found


def read_task(system: str) -> tuple[list[str], dict[str, str]]:
    """The system message -> (input names, {output name: note}) in DSPy's order."""
    head, _, structure = system.partition("All interactions will be structured")
    before_outputs, _, outputs_part = head.partition("Your output fields are:")
    inputs = [name for name, _ in LISTED_FIELD.findall(before_outputs.partition("Your input fields are:")[2])]
    notes = {name: "" for name, _ in LISTED_FIELD.findall(outputs_part)}
    for line in structure.splitlines():
        m = JSON_NOTE.match(line)
        text = json.loads(m.group(2)) if m else line.strip()  # JSONAdapter quotes each line's template
        m = NOTE.match(text)
        if m and m.group(1) in notes:
            notes[m.group(1)] = m.group(2) or ""
    return inputs, notes


def adapter_of(system: str, last: str) -> str:
    """Which DSPy adapter wrote a prompt (its system message, its last user message): chat, json, xml or
    two_step (the free-text first call of TwoStepAdapter; its extraction call is ChatAdapter's)."""
    if JSON_TASK in system:
        return "json"
    if XML_TASK in last:
        return "xml"
    return "two_step" if TWO_STEP_TASK in system else "chat"


class Prompt:
    """One conversation, read: the format asked for, the fields, the current inputs, the seeded generator."""

    def __init__(self, messages: list[dict]) -> None:
        self.system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        self.turns = [m for m in messages if m["role"] != "system"]
        self.last = self.turns[-1]["content"] if self.turns else ""
        self.format = adapter_of(self.system, self.last)
        if self.format == "two_step":
            head, _, tail = self.system.partition(TWO_STEP_TASK)
            self.inputs = [n for n, _ in LISTED_FIELD.findall(head)]
            self.types = dict(LISTED_FIELD.findall(tail))
            self.notes = {name: "" for name in self.types}
        else:
            self.inputs, self.notes = read_task(self.system)
            self.types = dict(LISTED_FIELD.findall(self.system.partition("Your output fields are:")[2]))
        self.current = self.inputs_of(self.last)
        self.rng = random.Random(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest())
        self.tag = f"{self.rng.getrandbits(16):04x}"

    def inputs_of(self, content: str) -> dict[str, str]:
        head = content.split("Respond with ")[0]
        if self.format == "two_step":
            found = dict(re.findall(r"^(\w+): (.*)$", head, re.M))
        else:
            found = blocks(head) or {name: text.strip() for name, text in XML_BLOCK.findall(head)}
        return {name: found[name] for name in self.inputs if name in found}

    def outputs_of(self, content: str) -> dict:
        """A demo's answer in this format -> its values (raw text, or JSON values for JSONAdapter)."""
        if self.format == "json":
            try:
                found = json.loads(content)
            except ValueError:
                found = {}
            found = found if isinstance(found, dict) else {}
        else:
            found = blocks(content) if self.format == "chat" else dict(XML_BLOCK.findall(content))
        return {k: v for k, v in found.items() if k in self.notes and v != NOT_SUPPLIED}

    def remembered(self) -> dict:
        """The outputs of a demo whose inputs equal the current ones (supplied fields only)."""
        if not self.current or self.format == "two_step":
            return {}
        for user, assistant in zip(self.turns[:-1], self.turns[1:-1]):
            if user["role"] == "user" and assistant["role"] == "assistant" and \
                    self.inputs_of(user["content"]) == self.current:
                return self.outputs_of(assistant["content"])
        return {}


def answer(messages: list[dict]) -> str:
    """The assistant's reply, in the format of the DSPy adapter that wrote ``messages``."""
    prompt = Prompt(messages)
    subject = _subject(prompt.current, prompt.inputs)
    observed = [o for o in OBSERVATION.findall(prompt.last) if o.strip() != FINISHED]
    if observed:
        subject = _line(observed[-1])  # after a tool call, answers build on what the tool said
    raw = prompt.remembered()  # already in the answer's format
    if TWO_STEP_EXTRACT in prompt.system:
        text = prompt.current.get("text", "")
        raw.update({name: value for name, value in re.findall(r"^(\w+): (.*)$", text, re.M)
                    if name in prompt.notes})
    values = {name: _value(prompt, name, subject) for name in prompt.notes if name not in raw}
    if AGENT in prompt.system and REACT_FIELDS <= set(prompt.notes):
        values.update(react_step(prompt.system, _subject(prompt.current, prompt.inputs), bool(observed),
                                 prompt.tag, prompt.rng))
        raw = {k: v for k, v in raw.items() if k not in REACT_FIELDS}
    return _written(prompt, raw, values)


def _written(prompt: Prompt, raw: dict, values: dict) -> str:
    """The answer text: ``raw`` values are already in the format (a demo's), ``values`` still to render."""
    order = [name for name in prompt.notes if name in raw or name in values]
    if prompt.format == "json":
        return json.dumps({name: raw[name] if name in raw else values[name] for name in order}, ensure_ascii=False)
    if prompt.format == "two_step":
        said = [f"{name}: {render(values[name])}" for name in order if values[name] is not _UNSAID]
        return "\n".join(said) or f"Worked out from {_subject(prompt.current, prompt.inputs)} {prompt.tag}."
    if prompt.format == "xml":
        nested = _nested_skeletons(prompt.system)
        return "\n".join(to_xml(values[name], name) if name in nested and name not in raw else
                         f"<{name}>\n{raw[name] if name in raw else escape(render(values[name]))}\n</{name}>"
                         for name in order)
    parts = [f"[[ ## {name} ## ]]\n{raw[name] if name in raw else render(values[name])}" for name in order]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


_UNSAID = object()  # a two-step output whose type the first prompt does not name: left to the extraction


def _value(prompt: Prompt, name: str, subject: str):
    note = prompt.notes.get(name, "")
    if note or prompt.format in ("chat", "json"):
        return value_for_note(note, name, subject, prompt.tag, prompt.rng)
    type_name = prompt.types.get(name, "str")
    schema = schema_of_name(type_name)
    if schema is not None:
        return from_schema(schema, schema, name, subject, prompt.tag, prompt.rng)
    if prompt.format == "xml":
        return from_skeleton(_nested_skeletons(prompt.system).get(name, f"<{name}>...</{name}>"), prompt.rng)
    return _UNSAID


def _nested_skeletons(system: str) -> dict[str, str]:
    """XMLAdapter's one-line skeletons of nested outputs (lists, maps, objects), by field."""
    structure = system.partition("All interactions will be structured")[2]
    return {m.group(1): m.group(0) for m in map(XML_NESTED.match, structure.splitlines()) if m}


AGENT = "You are an Agent."  # dspy.ReAct's instructions
REACT_FIELDS = {"next_thought", "next_tool_name", "next_tool_args"}
FINISHED = "Completed."  # the observation of ReAct's finish tool
TOOL_LINE = re.compile(r"^\s*\(\d+\) ([A-Za-z_][\w-]*)(?:, whose description is <desc>(.*?)</desc>\.|\.) "
                       r"It takes arguments (\{.*\})\.$", re.M)
OBSERVATION = re.compile(r"\[\[ ## observation_\d+ ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with |\Z)", re.S)
WORDS = re.compile(r"\w+")


def tools_of(system: str) -> list[tuple[str, str, dict]]:
    """ReAct's tool list in its instructions -> [(name, description, {arg: JSON schema})], finish last."""
    found = []
    for name, desc, args in TOOL_LINE.findall(system):
        try:
            parsed = ast.literal_eval(args)  # DSPy writes the args dict with Python's repr: literals only
        except (ValueError, SyntaxError):
            parsed = {}
        found.append((name, desc, parsed if isinstance(parsed, dict) else {}))
    return found


def react_step(system: str, subject: str, observed: bool, tag: str, rng: random.Random) -> dict:
    """One ReAct turn: call the declared tool that best matches the question once, then finish."""
    tools = [t for t in tools_of(system) if t[0] != "finish"]
    if observed or not tools:
        return {"next_thought": f"thought {tag}: I have what I need to answer.", "next_tool_name": "finish",
                "next_tool_args": {}}
    words = set(WORDS.findall(subject.lower()))
    name, _, args = max(tools, key=lambda t: len(words & set(WORDS.findall(f"{t[0]} {t[1]}".lower().replace("_", " ")))))
    values = {arg: subject if sub.get("type") == "string" else from_schema(sub, sub, arg, subject, tag, rng, 1)
              for arg, sub in args.items() if isinstance(sub, dict)}
    return {"next_thought": f"thought {tag}: I will ask {name}.", "next_tool_name": name, "next_tool_args": values}


def _subject(current: dict, input_names: list[str]) -> str:
    for name in input_names:
        text = current.get(name, "").strip()
        if text:
            return _line(text)
    return "no input"


def _line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "nothing"
    return line if len(line) <= SUBJECT_CHARS else line[: SUBJECT_CHARS - 3] + "..."


def count_tokens(text: str) -> int:
    """Whitespace-separated words: the offline model's idea of a token."""
    return len(text.split())
