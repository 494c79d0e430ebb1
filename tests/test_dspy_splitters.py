"""Stream splitters: any answer, cut anywhere, gives each field exactly the text its adapter parses.

The answers are written and parsed by DSPy's own adapters (ChatAdapter,
JSONAdapter, XMLAdapter) in this process, so the oracle is DSPy itself: for
every ``str`` output the joined chunks equal the parsed value, whatever the
values hold (quotes, backslashes, escapes, ``<``, ``&``, markers' pieces,
newlines, non-BMP characters) and wherever the stream is cut (one character
per event included, as h11 feeds its parsers one byte at a time).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.backends.dspy.splitters import SPLITTERS

dspy = pytest.importorskip("dspy")

ADAPTERS = {"chat": dspy.ChatAdapter(), "json": dspy.JSONAdapter(), "xml": dspy.XMLAdapter()}
SIGNATURE = dspy.Signature("question -> answer, topic, count: int, tags: list[str]")
TRICKY = st.sampled_from(['"', "\\", "\\u00e9", "\\n", "\n", "\n\n", "<", "</answer>", "&", "&amp;", "[[ ## ", " ## ]]",
                          "[[ ## topic ## ]]", "{", "}", ",", ":", " ", "\t", "é", "😀", "\u2028", "answer", "x"])
values = st.lists(st.one_of(TRICKY, st.text(max_size=4)), max_size=12).map("".join)


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]


def stream(adapter: str, pieces: list[str], fields=("answer", "topic", "count", "tags")) -> list[tuple]:
    chunks: list[tuple] = []
    splitter = SPLITTERS[adapter](fields, lambda f, t, last: chunks.append((f, t, last)))
    for piece in pieces:
        splitter.feed(piece)
    splitter.close()
    return chunks


def joined(chunks: list[tuple], field: str) -> str:
    mine = [c for c in chunks if c[0] == field]
    assert [c[2] for c in mine] == [False] * (len(mine) - 1) + [True], mine  # one last, at the end
    return "".join(c[1] for c in mine)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(ADAPTERS)), values, values, st.integers(0, 99), st.lists(values, max_size=3),
       st.lists(st.integers(0, 10_000), max_size=30), st.booleans())
@example("json", 'say "hi"\\', "tab\there", 3, ["a"], [], True)
@example("xml", "a < b & c", " spaced ", 3, [], [], True)
@example("chat", "done\n\n[[ ## completed", "x", 1, [], [], True)
@example("chat", " [[ ## topic ## ]]", "", 0, [], [], False)  # an indented header: ChatAdapter's cut is off by one
def test_joined_chunks_are_what_the_adapter_parses(adapter, answer, topic, count, tags, cuts, one_char):
    made = ADAPTERS[adapter]
    text = made.format_assistant_message_content(SIGNATURE, {"answer": answer, "topic": topic, "count": count,
                                                             "tags": tags})
    try:
        parsed = made.parse(SIGNATURE, text)
    except Exception:  # a value that breaks the format itself (DSPy cannot read it either)
        return
    pieces = list(text) if one_char else split(text, cuts)
    chunks = stream(adapter, pieces)
    for field in ("answer", "topic"):
        assert joined(chunks, field) == parsed[field], (field, text)
    assert {c[0] for c in chunks} <= {"answer", "topic", "count", "tags"}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_typed_fields_stream_as_their_text(adapter):
    text = ADAPTERS[adapter].format_assistant_message_content(
        SIGNATURE, {"answer": "a", "topic": "t", "count": 42, "tags": ["x", "y"]})
    chunks = stream(adapter, list(text))
    assert joined(chunks, "count") == "42"  # a value's own text, as the LM wrote it
    tags = joined(chunks, "tags")
    assert tags == "<item>x</item><item>y</item>" if adapter == "xml" else json.loads(tags) == ["x", "y"]


def test_text_outside_the_listed_fields_is_dropped():
    def only_answer(adapter: str, text: str) -> None:
        chunks = stream(adapter, [text], fields=("answer",))
        assert {c[0] for c in chunks} == {"answer"} and joined(chunks, "answer") == "yes"

    only_answer("chat", "Sure!\n[[ ## answer ## ]]\nyes\n\n[[ ## other ## ]]\nno\n\n[[ ## answer ## ]]\nagain")
    only_answer("chat", "[[ ## answer ## ]] yes  \n\n[[ ## completed ## ]]")
    only_answer("json", '```json\n{"other": {"a": [1, "}"]}, "answer": "yes"}\n```')
    only_answer("xml", "<other>\n<answer>no</answer>\n</other>\n<answer>\nyes\n</answer>")  # top level only


@pytest.mark.parametrize("adapter, text", [
    ("chat", "[[ ## answer ## ]]\nhalf an ans"),
    ("json", '{"answer": "half an ans'),
    ("xml", "<answer>\nhalf an ans"),
])
def test_a_truncated_answer_still_ends_its_field(adapter, text):
    assert stream(adapter, list(text), fields=("answer",))[-1] == ("answer", "", True)
    assert joined(stream(adapter, [text], fields=("answer",)), "answer") == "half an ans"
