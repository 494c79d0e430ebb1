"""Python's annotation syntax as plain text -> the map form of a field type, without evaluating anything.

DSPy's own string signatures (``"question: str -> answer: Literal['yes', 'no']"``)
are read by ``ast`` and resolved by name, importing any module a name mentions;
this module reads the same spelling with a tokenizer and a small recursive
descent parser that knows only the whitelisted names:

    str  int  float  bool                    history  image  (dspy.History, dspy.Image)
    list[T]  List[T]  dict[str, T]  Dict[str, T]
    Optional[T]  optional[T]  T | None  Union[T, None]
    Literal['a', "b", 3, -1, True]

The result is the map form ``fieldtypes.parse`` takes (``{"list": "int"}``,
``{"literal": [...]}``, ``{"optional": T}``, a primitive's name), so a typed
string and a typed map go through one whitelist and one set of limits. Quoted
strings know the escapes ``\\\\ \\' \\" \\n \\r \\t`` and nothing else. ``spec``
uses ``tokenize`` to read whole signature strings. Pure Python, no DSPy.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ...errors import validation_error

_TOKEN = re.compile(r"""\s*(?:
    (?P<punct>->|[\[\],:|=])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<string>'(?:[^'\\\n\r]|\\.)*'|"(?:[^"\\\n\r]|\\.)*")
)""", re.X)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_QUOTE = {v: k for k, v in _ESCAPES.items() if k not in "'\""}
PRIMITIVES = ("str", "int", "float", "bool")
MEDIA = {"history": "history", "image": "image", "dspy.History": "history", "dspy.Image": "image"}
GENERICS = {"list": "list", "List": "list", "dict": "dict", "Dict": "dict", "optional": "optional",
            "Optional": "optional", "Literal": "literal", "Union": "union"}
NONE = ("none",)  # the parsed ``None`` of a union, never a type by itself


class Token(NamedTuple):
    kind: str  # punct, name, number, string, or bad (one character the grammar does not know)
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    """Every token of ``text``; a character the grammar does not know is a ``bad`` token of its own.

    Reading on past it keeps the structure (``->``, commas) visible, so an
    error can name the field whose type holds the unknown text.
    """
    tokens, pos = [], 0
    end = len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            start = len(text) - len(text[pos:].lstrip())
            tokens.append(Token("bad", text[start], start))
            pos = start + 1
            continue
        kind = m.lastgroup or "bad"
        tokens.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


def spelling(tokens: list[Token]) -> str:
    return " ".join(t.text for t in tokens)[:200]


def unknown_type(path: str, text: str, why: str = ""):
    return validation_error(
        "bad_type", f"{path}: unknown type {text!r}{why}; use str, int, float, bool, list[T], dict[str, T], "
        "Optional[T] (or T | None), Literal[...], or for an input dspy.History or dspy.Image", path=path)


def parse(tokens: list[Token], path: str, max_depth: int):
    """The tokens of one annotation -> its map form; raises ``validation`` naming ``path``."""
    parser = _Parser(tokens, path, max_depth)
    result = parser.union(0)
    if parser.i != len(tokens):
        raise unknown_type(path, spelling(tokens))
    if result is NONE:
        raise unknown_type(path, "None", " (None is only a type as part of Optional[T] or T | None)")
    return result


def parse_text(text: str, path: str, max_depth: int):
    return parse(tokenize(text), path, max_depth)


class _Parser:
    def __init__(self, tokens: list[Token], path: str, max_depth: int) -> None:
        self.tokens, self.path, self.max_depth = tokens, path, max_depth
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, text: str) -> None:
        token = self.peek()
        if token is None or token.kind != "punct" or token.text != text:
            raise unknown_type(self.path, spelling(self.tokens), f" (expected {text!r})")
        self.i += 1

    def union(self, depth: int):
        if depth > self.max_depth:
            raise validation_error("type_too_deep", f"{self.path}: types nest at most {self.max_depth} levels",
                                   path=self.path)
        parts = [self.atom(depth)]
        while (token := self.peek()) is not None and token.text == "|" and token.kind == "punct":
            self.i += 1
            parts.append(self.atom(depth))
        return self.merge(parts)

    def merge(self, parts: list):
        """``T | None`` (in any order, also ``Union[...]``) is ``Optional[T]``; other unions are not whitelisted."""
        types = [p for p in parts if p is not NONE]
        if len(types) > 1:
            raise unknown_type(self.path, spelling(self.tokens), " (a union other than T | None)")
        if not types:
            return NONE
        return {"optional": types[0]} if len(parts) > 1 else types[0]

    def atom(self, depth: int):
        token = self.peek()
        if token is None or token.kind != "name":
            raise unknown_type(self.path, token.text if token else spelling(self.tokens))
        self.i += 1
        name = token.text
        if name == "None":
            return NONE
        if name in PRIMITIVES:
            return name
        if name in MEDIA:
            return MEDIA[name]
        kind = GENERICS.get(name)
        if kind is None:
            raise unknown_type(self.path, name)
        self.take("[")
        if kind == "literal":
            values = [self.literal_value()]
            while self.peek() is not None and self.peek().text == ",":
                self.i += 1
                values.append(self.literal_value())
            self.take("]")
            return {"literal": values}
        if kind == "dict":
            key = self.peek()
            if key is None or key.text != "str":
                raise validation_error("bad_type", f"{self.path}: dict keys must be str, as in dict[str, int]",
                                       path=self.path)
            self.i += 1
            self.take(",")
        args = [self.union(depth + 1)]
        if kind == "union":
            while self.peek() is not None and self.peek().text == ",":
                self.i += 1
                args.append(self.union(depth + 1))
        self.take("]")
        if kind == "union":
            return self.merge(args)
        if args[0] is NONE:
            raise unknown_type(self.path, spelling(self.tokens), " (None is not a type argument)")
        return {kind: args[0]}

    def literal_value(self):
        token = self.peek()
        if token is None:
            raise unknown_type(self.path, spelling(self.tokens))
        self.i += 1
        if token.kind == "string":
            return unquote(token.text, self.path)
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "name" and token.text in ("True", "False"):
            return token.text == "True"
        raise validation_error("bad_type", f"{self.path}: Literal values are quoted strings, integers, True or "
                               f"False, got {token.text[:100]!r}", path=self.path)


def unquote(text: str, path: str) -> str:
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            escaped = _ESCAPES.get(body[i + 1]) if i + 1 < len(body) else None
            if escaped is None:
                raise validation_error("bad_type", f"{path}: a Literal string may use only the escapes "
                                       "\\\\ \\' \\\" \\n \\r \\t", path=path)
            out.append(escaped)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def quote(value: str) -> str:
    """A string as a Python literal that ``unquote`` (and Python) read back as ``value``."""
    mark = '"' if "'" in value and '"' not in value else "'"
    body = "".join("\\" + ch if ch in ("\\", mark) else "\\" + _QUOTE[ch] if ch in _QUOTE else ch for ch in value)
    return f"{mark}{body}{mark}"
