"""The ``offline`` model's mind: read a ChatAdapter conversation, write a type-valid answer.

It sees only what any LM sees, the messages. DSPy's ChatAdapter spells out
the task in its system message: the input and output field names, and for
every output a note saying what the value must be (``a single int value``,
``True or False``, ``one of: a; b``, ``the JSON schema: {...}``). The model
answers every output with a value valid for that note:

* derived from the inputs: strings quote the first input value, and every
  value is drawn from a generator seeded by a hash of the whole prompt, so
  the same prompt always gets the same answer and a different prompt
  (other inputs, instructions or demos) a different one;
* from memory: when the inputs are exactly those of a demo in the prompt, the
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

HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
LISTED_FIELD = re.compile(r"^\s*\d+\. `(\w+)`", re.M)
NOTE = re.compile(r"^\{(\w+)\}(?: {8}# note: the value you produce (.*))?$")
NOT_SUPPLIED = "Not supplied for this particular example."
SUBJECT_CHARS = 60


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
    inputs = LISTED_FIELD.findall(before_outputs.partition("Your input fields are:")[2])
    output_names = LISTED_FIELD.findall(outputs_part)
    notes = {name: "" for name in output_names}
    for line in structure.splitlines():
        m = NOTE.match(line.strip())
        if m and m.group(1) in notes:
            notes[m.group(1)] = m.group(2) or ""
    return inputs, notes


def answer(messages: list[dict]) -> str:
    """The assistant's reply, in ChatAdapter's format, to a DSPy ChatAdapter conversation."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    input_names, notes = read_task(system)
    turns = [m for m in messages if m["role"] != "system"]
    current = _inputs_of(turns[-1]["content"] if turns else "", input_names)
    remembered = _remembered(turns, current, input_names)
    rng = random.Random(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest())
    tag = f"{rng.getrandbits(16):04x}"
    subject = _subject(current, input_names)
    last = turns[-1]["content"] if turns else ""
    observed = [o for o in OBSERVATION.findall(last) if o.strip() != FINISHED]
    if observed:
        subject = _line(observed[-1])  # after a tool call, answers build on what the tool said
    values = {name: remembered[name] if name in remembered else value_for_note(note, name, subject, tag, rng)
              for name, note in notes.items()}
    if AGENT in system and {"next_thought", "next_tool_name", "next_tool_args"} <= set(values):
        values.update(react_step(system, _subject(current, input_names), bool(observed), tag, rng))
    adapter = adapter_of(system, last)
    if adapter == "json":
        return json.dumps(values, ensure_ascii=False)
    if adapter == "xml":
        return "\n".join(f"<{name}>\n{render(value)}\n</{name}>" for name, value in values.items())
    parts = [f"[[ ## {name} ## ]]\n{render(value)}" for name, value in values.items()]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


JSON_TASK = "Outputs will be a JSON object"  # in JSONAdapter's system message
XML_TASK = "wrapped in XML tags"  # in XMLAdapter's last user message


def adapter_of(system: str, last: str) -> str:
    """Which DSPy adapter wrote a prompt (its system message, its last user message): chat, json or xml."""
    if JSON_TASK in system:
        return "json"
    if XML_TASK in last:
        return "xml"
    return "chat"


XML_BLOCK = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
AGENT = "You are an Agent."  # dspy.ReAct's instructions
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


def _inputs_of(content: str, input_names: list[str]) -> dict[str, str]:
    head = content.split("Respond with ")[0]
    found = blocks(head) or {name: text.strip() for name, text in XML_BLOCK.findall(head)}
    return {name: found[name] for name in input_names if name in found}


def _remembered(turns: list[dict], current: dict, input_names: list[str]) -> dict[str, str]:
    """The outputs of a demo whose inputs equal the current ones (supplied fields only)."""
    if not current:
        return {}
    for user, assistant in zip(turns[:-1], turns[1:-1]):
        if user["role"] == "user" and assistant["role"] == "assistant" and \
                _inputs_of(user["content"], input_names) == current:
            return {k: v for k, v in blocks(assistant["content"]).items() if v != NOT_SUPPLIED and k != "completed"}
    return {}


def _subject(current: dict, input_names: list[str]) -> str:
    for name in input_names:
        text = current.get(name, "").strip()
        if text:
            return _line(text)
    return "no input"


def _line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "nothing"
    return line if len(line) <= SUBJECT_CHARS else line[: SUBJECT_CHARS - 3] + "..."


def render(value) -> str:
    """A value as the answer text DSPy parses back: strings bare, booleans as True/False, the rest JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def value_for_note(note: str, name: str, subject: str, tag: str, rng: random.Random):
    """A value valid for one of ChatAdapter's output notes."""
    if note == "must be True or False":
        return rng.random() < 0.5
    if note == "must be a single int value":
        return rng.randrange(100)
    if note == "must be a single float value":
        return round(rng.random() * 100, 2)
    for prefix in ("must exactly match (no extra characters) one of: ", "must be one of: "):
        if note.startswith(prefix):
            options = note[len(prefix):].split("; ")
            return options[rng.randrange(len(options))]
    prefix = "must adhere to the JSON schema: "
    if note.startswith(prefix):
        try:
            schema = json.loads(note[len(prefix):])
        except ValueError:
            schema = {"type": "string"}
        return from_schema(schema, schema, name, subject, tag, rng)
    return f"{name} {tag}: {subject}"


def from_schema(schema: dict, root: dict, name: str, subject: str, tag: str, rng: random.Random, depth: int = 0):
    """A value valid for a (pydantic-generated) JSON schema."""
    if depth > 20:
        return None
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        return from_schema(target, root, name, subject, tag, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return from_schema(options[0], root, name, subject, tag, rng, depth + 1)
    kind = schema.get("type")
    if kind == "string":
        return f"{name} {tag}: {subject}" if depth == 0 else f"{name} {tag}"
    if kind == "integer":
        return rng.randrange(100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        item = schema.get("items", {"type": "string"})
        return [from_schema(item, root, name, subject, tag, rng, depth + 1) for _ in range(2)]
    if kind == "object":
        props = schema.get("properties")
        if props:
            return {key: from_schema(sub, root, key, subject, tag, rng, depth + 1) for key, sub in props.items()}
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {"type": "string"}
        return {f"{name}_{i}": from_schema(sub, root, name, subject, tag, rng, depth + 1) for i in (1, 2)}
    return f"{name} {tag}"


def count_tokens(text: str) -> int:
    """Whitespace-separated words: the offline model's idea of a token."""
    return len(text.split())
