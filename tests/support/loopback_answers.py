"""What the loopback OpenAI server answers: text in the format a DSPy adapter asked for, and embeddings.

A model driven by DSPy's adapters: the output field names come from the system
message (``Your output fields are: 1. `answer` ...``), the input values from the
last user message (``[[ ## question ## ]]`` or ``<question>`` blocks), and every
output field is answered ``"<model> says <field> for <first input value>"``, as a
ChatAdapter, JSON or XML answer. Standard library only.
"""

from __future__ import annotations

import json
import re

OUTPUT_FIELDS = re.compile(r"Your output fields are:\n(.*?)(?:\n[A-Z]|\Z)", re.S)
FIELD_NAME = re.compile(r"^\s*\d+\. `(\w+)`", re.M)
INPUT_BLOCK = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", re.S)

XML_BLOCK = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
EMBEDDING_DIMS = 32


def _text(content) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def completion_text(model: str, messages: list[dict], response_format=None) -> str:
    """The answer to a conversation, in the format its DSPy adapter asked for (chat, JSON or XML)."""
    system = _text(next((m.get("content") for m in messages if m.get("role") == "system"), ""))
    last_user = _text(next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""))
    found = OUTPUT_FIELDS.search(system)
    outputs = FIELD_NAME.findall(found.group(1)) if found else ["answer"]
    xml = "wrapped in XML tags" in last_user
    inputs = XML_BLOCK.findall(last_user) if xml else INPUT_BLOCK.findall(last_user)
    subject = inputs[0][1].strip() if inputs else "nothing"
    values = {name: f"{model} says {name} for {subject}" for name in outputs}
    if response_format is not None or "Outputs will be a JSON object" in system:
        return json.dumps(values)
    if xml:
        return "\n".join(f"<{name}>\n{value}\n</{name}>" for name, value in values.items())
    blocks = [f"[[ ## {name} ## ]]\n{value}" for name, value in values.items()]
    return "\n\n".join(blocks + ["[[ ## completed ## ]]"])


def embedding(text: str) -> list[float]:
    """A deterministic unit vector for a text: its words hashed into EMBEDDING_DIMS buckets."""
    import hashlib
    import math

    vector = [0.0] * EMBEDDING_DIMS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % EMBEDDING_DIMS] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def tokens(text: str) -> int:
    return max(1, len(text.split()))
