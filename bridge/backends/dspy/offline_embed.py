"""The ``offline`` embedder: deterministic vectors from the words of a text, no network, no model.

Each word (lower case, ``\\w+``) and each pair of neighbouring words is
hashed into one of ``dims`` buckets with a sign; the vector is the sum,
scaled to unit length. Texts sharing words score high cosine similarity, so
retrieval over a small corpus behaves sensibly in demos and tests, and the
same text always gets the same vector in every process (no seed, no state).
Pure Python.
"""

from __future__ import annotations

import hashlib
import math
import re

MODEL = "offline"
DEFAULT_DIMS = 256
WORD = re.compile(r"\w+")


def _bucket(token: str, dims: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:7], "big") % dims, 1.0 if digest[7] & 1 else -1.0


def embed_one(text: str, dims: int = DEFAULT_DIMS) -> list[float]:
    vector = [0.0] * dims
    words = WORD.findall(text.lower())
    for token, weight in [*((w, 1.0) for w in words), *((f"{a} {b}", 0.5) for a, b in zip(words, words[1:]))]:
        index, sign = _bucket(token, dims)
        vector[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def embedder(dims: int = DEFAULT_DIMS):
    """``fn(texts) -> list of vectors``: the callable ``dspy.Embedder`` takes for a custom model."""

    def embed(texts: list[str], **_ignored) -> list[list[float]]:
        return [embed_one(t, dims) for t in texts]

    return embed
