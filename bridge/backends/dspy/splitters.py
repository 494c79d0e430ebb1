"""An adapter's answer, fed as it streams -> ``emit(field, text, last)`` with each field's own text only.

One splitter per answer format (sans-IO: text in, calls out, no DSPy), so
that a field's pieces join to exactly what the adapter parses for a ``str``
field, whatever sizes the provider streams in (one character per event
included), and nothing of the format (markers, quotes, tags, the next field)
ever reaches a chunk:

* ``ChatSplitter``: ``[[ ## field ## ]]`` sections (ChatAdapter), values stripped;
* ``JSONSplitter``: one JSON object (JSONAdapter): a string value decoded, any
  other value as its JSON text;
* ``XMLSplitter``: ``<field>...</field>`` elements (XMLAdapter): text
  unescaped and stripped, a nested value as its inner XML.

Text outside the listed fields is dropped. ``close()`` ends the answer: an
open field's rest goes out as its last chunk. Each field ends with exactly
one ``last=True`` call, the pieces before it ``last=False``.
"""

from __future__ import annotations

import json
import re
from typing import Callable

Emit = Callable[[str, str, bool], None]


class _Field:
    """The field being streamed: holds back what may still turn out to be its trailing whitespace."""

    def __init__(self, name: str | None, emit: Emit, strip: bool = True) -> None:
        self.name, self.emit, self.strip = name, emit, strip
        self.started = not strip  # past the leading whitespace

    def send(self, text: str, final: bool) -> None:
        if self.name is None:
            return
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if final and self.strip:
            text = text.rstrip()
        if text or final:
            self.emit(self.name, text, final)


# -- ChatAdapter ------------------------------------------------------------------------------------

HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
# A line start that may still grow into a header: "[", "[[ #", "[[ ## answ", "[[ ## answer ## ]"...
PARTIAL_HEADER = re.compile(r"\[(?:\[(?: (?:#(?:#(?: (?:\w+(?: (?:#(?:#(?: (?:\])?)?)?)?)?)?)?)?)?)?)?\Z")
# What str.splitlines() breaks lines at (ChatAdapter reads its answer line by line, joined by "\n").
LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class ChatSplitter:
    """ChatAdapter's ``[[ ## field ## ]]`` sections, read line by line exactly as ``ChatAdapter.parse`` does.

    A header counts only at the start of a line (after spaces); the rest of
    its line is the section's first line, stripped; the first section of a
    field wins; line breaks of any kind become ``\\n``; a value is stripped.
    """

    def __init__(self, fields, emit: Emit) -> None:
        self.fields, self.emit = set(fields), emit
        self.seen: set[str] = set()
        self.field = _Field(None, emit)
        self.line = ""  # the current line, as far as it has arrived
        self.kind = ""  # "" undecided, "text", or "header" (its rest is sent stripped when the line ends)
        self.sent = 0  # characters of a text line already passed on
        self.rest_at = 0  # a header line: where ChatAdapter's cut for the rest of the line falls
        self.spaces = ""  # whitespace held back: it is trailing unless more text follows
        self.carriage = False  # the text so far ended with "\r": a "\n" next is the same line break

    def feed(self, text: str) -> None:
        if self.carriage and text.startswith("\n"):
            text = text[1:]
        self.carriage = text.endswith("\r")
        lines = LINE_BREAK.split(text)
        for i, piece in enumerate(lines):
            self.line += piece
            self._read(complete=i < len(lines) - 1)

    def close(self) -> None:
        self._read(complete=True)
        self.field.send("", final=True)
        self.field = _Field(None, self.emit)

    def _read(self, complete: bool) -> None:
        if not self.kind:
            stripped = self.line.strip()
            header = HEADER.match(stripped)
            if header:
                name = header.group(1)
                self.field.send("", final=True)
                fresh = name in self.fields and name not in self.seen
                self.seen.add(name)
                self.field, self.spaces, self.kind = _Field(name if fresh else None, self.emit), "", "header"
                self.rest_at = header.end()
            elif complete or not (stripped == "" or PARTIAL_HEADER.match(stripped)):
                self.kind = "text"
        if self.kind == "text":
            self._content(self.line[self.sent:])
            self.sent = len(self.line)
        if complete:
            if self.kind == "header":
                # ChatAdapter matches the stripped line but cuts the line as it came: indented, the
                # header's last characters count as content. Its answer is the oracle, quirk included.
                self._content(self.line[self.rest_at:].strip())
            self.spaces += "\n"
            self.line, self.kind, self.sent = "", "", 0

    def _content(self, text: str) -> None:
        body = text.rstrip()
        if body:
            self.field.send(self.spaces + body, final=False)
            self.spaces = ""
        self.spaces += text[len(body):]


# -- JSONAdapter ------------------------------------------------------------------------------------

def _decodable(raw: str) -> int:
    """How much of a JSON string's raw text ends on an escape boundary (never inside ``\\u00e9`` or a
    surrogate pair, whose halves decode only together)."""
    i = 0
    while i < len(raw):
        if raw[i] != "\\":
            i += 1
            continue
        size = 6 if raw[i + 1:i + 2] == "u" else 2
        if size == 6 and raw[i + 2:i + 3] in ("d", "D") and raw[i + 3:i + 4] in tuple("89abAB"):
            size = 12  # a high surrogate and its low half
        if i + size > len(raw):
            return i
        i += size
    return i


class JSONSplitter:
    """JSONAdapter's one JSON object, read one character at a time with a small state machine."""

    def __init__(self, fields, emit: Emit) -> None:
        self.fields, self.emit = set(fields), emit
        self.state = "start"
        self.key = ""  # raw text of the key being read
        self.field = _Field(None, emit)
        self.raw = ""  # string value: raw text not yet decoded; other values: text not yet sent
        self.depth = 0  # other values: nesting of [] and {}
        self.in_string = False  # other values: inside a string of the value
        self.escaped = False  # the previous character was a backslash (in any string)

    def feed(self, text: str) -> None:
        for ch in text:
            getattr(self, "_" + self.state)(ch)
        if self.state == "string_value":
            self._decode(final=False)
        elif self.state == "value":
            self.field.send(self.raw.rstrip(), final=False)
            self.raw = self.raw[len(self.raw.rstrip()):]

    def close(self) -> None:
        if self.state == "string_value":
            self._decode(final=True)
        elif self.state == "value":
            self.field.send(self.raw, final=True)
        self.state = "done"

    def _start(self, ch: str) -> None:
        if ch == "{":
            self.state = "member"

    def _member(self, ch: str) -> None:
        if ch == '"':
            self.state, self.key = "key", ""
        elif ch == "}":
            self.state = "done"

    def _key(self, ch: str) -> None:
        if ch == '"' and not self.escaped:
            self.state = "colon"
        else:
            self.key += ch
        self.escaped = ch == "\\" and not self.escaped

    def _colon(self, ch: str) -> None:
        if ch == ":":
            self.state = "value_start"

    def _value_start(self, ch: str) -> None:
        if ch.isspace():
            return
        try:
            name = json.loads(f'"{self.key}"')
        except ValueError:
            name = None
        self.field = _Field(name if name in self.fields else None, self.emit, strip=ch != '"')
        self.raw, self.escaped = "", False
        if ch == '"':
            self.state = "string_value"
        else:
            self.state, self.depth, self.in_string = "value", 0, False
            self._value(ch)

    def _string_value(self, ch: str) -> None:
        if ch == '"' and not self.escaped:
            self._decode(final=True)
            self.state = "member"
            return
        self.raw += ch
        self.escaped = ch == "\\" and not self.escaped

    def _decode(self, final: bool) -> None:
        """Send the decoded text of the string value read so far (never half an escape)."""
        ready = self.raw if final else self.raw[:_decodable(self.raw)]
        try:
            text = json.loads(f'"{ready}"', strict=False)
        except ValueError:
            text = ready  # not valid JSON: the adapter's repair pass decides; send what was written
        self.field.send(text, final=final)
        self.raw = self.raw[len(ready):]

    def _value(self, ch: str) -> None:
        if self.in_string:
            if ch == '"' and not self.escaped:
                self.in_string = False
            self.escaped = ch == "\\" and not self.escaped
        elif ch == '"':
            self.in_string = True
        elif ch in "[{":
            self.depth += 1
        elif ch in "]}" and self.depth > 0:
            self.depth -= 1
        elif ch in ",}" and self.depth == 0:
            self.field.send(self.raw, final=True)
            self.state = "member" if ch == "," else "done"
            return
        self.raw += ch

    def _done(self, ch: str) -> None:
        pass


# -- XMLAdapter -------------------------------------------------------------------------------------

_TAG = re.compile(r"<(/?)(\w+)\s*(/?)>")
_PARTIAL_TAG = re.compile(r"<[^<>]*\Z")
_ENTITY = re.compile(r"&(#[0-9]+|#x[0-9a-fA-F]+|amp|lt|gt|quot|apos);")
_PARTIAL_ENTITY = re.compile(r"&[#\w]*\Z")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def unescape(text: str) -> str:
    def one(m: re.Match) -> str:
        ref = m.group(1)
        if ref.startswith("#x"):
            return chr(int(ref[2:], 16))
        return chr(int(ref[1:])) if ref.startswith("#") else _NAMED[ref]

    return _ENTITY.sub(one, text)


class XMLSplitter:
    """XMLAdapter's ``<field>`` elements: a flat field's text unescaped and stripped; a nested one's inner XML."""

    def __init__(self, fields, emit: Emit) -> None:
        self.fields, self.emit = set(fields), emit
        self.field: _Field | None = None
        self.open = ""  # the element being streamed
        self.depth = 0  # elements of the same name opened inside it
        self.outside = 0  # depth inside an element that is not a field
        self.carriage = ""
        self.nested = False  # a child element appeared: its text is sent as written
        self.pending = ""

    def feed(self, text: str) -> None:
        text = self.carriage + text  # XML reads "\r\n" and "\r" as "\n"; a "\r" may be half of a "\r\n"
        self.carriage = "\r" if text.endswith("\r") else ""
        self.pending += text[:len(text) - len(self.carriage)].replace("\r\n", "\n").replace("\r", "\n")
        while True:
            found = _TAG.search(self.pending)
            if found is None:
                break
            closing, name, empty = found.group(1) == "/", found.group(2), found.group(3) == "/"
            before, after = self.pending[:found.start()], self.pending[found.end():]
            if self.field is None:  # only a top-level element is a field, as the adapter reads them
                if not closing and name in self.fields and self.outside == 0:
                    self.field, self.open, self.depth, self.nested = _Field(name, self.emit), name, 0, False
                    if empty:
                        self._end("")
                elif not empty:
                    self.outside = max(0, self.outside + (-1 if closing else 1))
                self.pending = after
                continue
            if name == self.open and closing and self.depth == 0:
                self._end(before)
            else:
                if name == self.open and not empty:
                    self.depth += -1 if closing else 1
                self.nested = True
                self._send(before + found.group(0), final=False)
            self.pending = after
        if self.field is None:
            arriving = _PARTIAL_TAG.search(self.pending)  # only a tag still arriving matters here
            self.pending = self.pending[arriving.start():] if arriving else ""
            return
        hold = _PARTIAL_TAG.search(self.pending) or _PARTIAL_ENTITY.search(self.pending)
        safe = self.pending[:hold.start() if hold else len(self.pending)]
        safe = safe[:len(safe.rstrip())] if not self.nested else safe
        self._send(safe, final=False)
        self.pending = self.pending[len(safe):]

    def _send(self, text: str, final: bool) -> None:
        if self.field is not None:
            self.field.send(text if self.nested else unescape(text), final)

    def _end(self, text: str) -> None:
        self._send(text, final=True)
        self.field = None

    def close(self) -> None:
        if self.field is not None:
            self._end(self.pending + ("\n" if self.carriage else ""))
        self.pending = self.carriage = ""


SPLITTERS = {"chat": ChatSplitter, "json": JSONSplitter, "xml": XMLSplitter}
