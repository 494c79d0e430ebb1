"""Named metrics for ``evaluate_program`` and ``optimize_program``: field comparisons, as data.

A client names a metric; no code crosses the wire. Each metric compares the
labelled outputs of a training example with the program's prediction, field
by field (the labelled signature outputs, or the ``metric_fields`` asked
for; a ChainOfThought's labelled reasoning is not compared), and
returns the mean of the field scores in [0, 1]. BootstrapFewShot keeps a
generated demo when the score reaches the threshold (default: every compared
field matches; 0.5 for ``f1``). Plain Python, no DSPy import (``scoring`` makes DSPy metrics of them).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Callable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """As DSPy's ``normalize_text``: Unicode NFD, then SQuAD (lower case, no punctuation, no articles, spaces)."""
    text = unicodedata.normalize("NFD", text)
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _exact(gold, pred) -> float:
    if isinstance(gold, str) and isinstance(pred, str):
        return float(normalize(gold) == normalize(pred))
    return float(gold == pred)


def _equals(gold, pred) -> float:
    return float(gold == pred and type(gold) is type(pred))


def _contains(gold, pred) -> float:
    if isinstance(gold, str) and isinstance(pred, str):
        return float(normalize(gold) in normalize(pred))
    return float(gold == pred)


def _f1(gold, pred) -> float:
    if not (isinstance(gold, str) and isinstance(pred, str)):
        return float(gold == pred)
    gold_tokens, pred_tokens = normalize(gold).split(), normalize(pred).split()
    common = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if not gold_tokens or not pred_tokens or common == 0:
        return float(gold_tokens == pred_tokens)
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# name -> (field comparison, default threshold, description)
METRICS: dict[str, tuple[Callable, float, str]] = {
    "exact_match": (_exact, 1.0, "strings equal after DSPy's normalize_text (Unicode NFD, case, punctuation, "
                    "articles, spaces), as dspy.evaluate.answer_exact_match; other values equal as JSON"),
    "equals": (_equals, 1.0, "values equal exactly, as JSON, type included"),
    "contains": (_contains, 1.0, "the normalised label occurs inside the normalised predicted string"),
    "f1": (_f1, 0.5, "token-level F1 between normalised strings (SQuAD), in [0, 1]"),
}


JUDGE = ("an LM judge declared as data: {\"judge\": {\"signature\", \"inputs\": {judge_input: "
         "'example.<field>' | 'prediction.<output>'}, \"score\": <a bool, int or float output>, \"module\", "
         "\"instructions\"}}; it runs on the scope's LM; a bool scores 1 or 0, a number is clipped to [0, 1]")


CALLBACK = ("{\"callback\": name}: the client scores each prediction; the callback gets {\"example\": {\"inputs\", "
            "\"outputs\"}, \"prediction\": {output: value}} and answers a number, a bool, or {\"score\", \"feedback\"} "
            "(GEPA reads the feedback)")


def describe() -> dict:
    named = {name: {"default_threshold": threshold, "description": text}
             for name, (_, threshold, text) in METRICS.items()}
    return {**named, "judge": {"default_threshold": "1 for a bool score, else 0.5", "description": JUDGE},
            "callback": {"default_threshold": "none: any truthy score (as a Python metric in DSPy)",
                         "description": CALLBACK}}
