"""Text embeddings and nearest-neighbour search over a corpus held in the session.

A second backend, written with ``bridge.sdk`` as any user would write theirs,
on numpy alone (no model to download):

    portbridge worker --expose bridge.backends.embeddings

- ``embeddings.embed``: texts -> vectors. Each text's features (lower-cased
  words, and the character trigrams of each word, so that "optimiser" and
  "optimizer" share most of theirs) are hashed into ``dim`` buckets (CRC-32:
  the same vector in every process), counted with sublinear term frequency
  (1 + log tf), L2-normalised.
- ``embeddings.add``: documents (``{"id", "text"}``) into the session's corpus;
  an id added again replaces its text. ``progress`` events as it goes.
- ``embeddings.search``: the ``k`` documents nearest to a query by cosine
  similarity of TF-IDF-weighted vectors (the corpus's document frequencies
  weigh each feature), best first.
- ``embeddings.search_many``: many queries, one ``chunk`` per query as each is
  answered.
- ``embeddings.info``, ``embeddings.clear``.

``Corpus`` is the plain Python API the commands wrap: the benchmark calls it
in-process to measure what crossing the worker costs.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Annotated, Generator

import numpy as np

from bridge.sdk import Context, Schema, command

DIM = 1024
MAX_DOCUMENTS = 200_000
_WORD = re.compile(r"\w+")
Dim = Annotated[int, "vector length (hash buckets)", Schema(minimum=8, maximum=65536)]
K = Annotated[int, "how many documents to return", Schema(minimum=1, maximum=1000)]


def features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    out = list(words)
    for word in words:
        padded = f"<{word}>"
        out.extend(padded[i:i + 3] for i in range(len(padded) - 2))
    return out


def term_frequencies(texts: list[str], dim: int) -> np.ndarray:
    """(len(texts), dim) float32: 1 + log(count) of each hashed feature, 0 where absent."""
    rows = np.zeros((len(texts), dim), dtype=np.float32)
    crc32 = zlib.crc32
    for i, text in enumerate(texts):
        feats = features(text)
        if feats:
            buckets = np.fromiter((crc32(f.encode()) for f in feats), dtype=np.uint32, count=len(feats)) % dim
            counts = np.bincount(buckets, minlength=dim).astype(np.float32)
            nonzero = counts > 0
            rows[i, nonzero] = 1.0 + np.log(counts[nonzero])
    return rows


def normalised(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


class Corpus:
    """Documents and their term-frequency rows; TF-IDF vectors rebuilt when the corpus changed."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.rows: dict[str, int] = {}  # id -> row
        self._tf = np.zeros((0, dim), dtype=np.float32)  # rows beyond len(self) are spare capacity
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # (idf, normalised TF-IDF rows)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: list[str], texts: list[str]) -> int:
        """Add (or replace, by id) documents; returns how many were new."""
        tf = term_frequencies(texts, self.dim)
        new: dict[str, int] = {}  # id -> its last position in this call
        replaced: dict[int, int] = {}  # row -> position
        for i, doc_id in enumerate(ids):
            row = self.rows.get(doc_id)
            if row is None:
                new[doc_id] = i
            else:
                replaced[row] = i
        n = len(self.ids)
        if n + len(new) > MAX_DOCUMENTS:
            raise ValueError(f"a corpus holds at most {MAX_DOCUMENTS} documents")
        if n + len(new) > len(self._tf):  # grow by doubling: adding in batches stays linear
            grown = np.zeros((max(2 * len(self._tf), n + len(new), 64), self.dim), dtype=np.float32)
            grown[:n] = self._tf[:n]
            self._tf = grown
        for row, i in replaced.items():
            self.texts[row] = texts[i]
            self._tf[row] = tf[i]
        for doc_id, i in new.items():
            self.rows[doc_id] = len(self.ids)
            self.ids.append(doc_id)
            self.texts.append(texts[i])
        self._tf[n:len(self.ids)] = tf[list(new.values())]
        self._index = None
        return len(new)

    def index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            n = len(self.ids)
            tf = self._tf[:n]
            df = np.count_nonzero(tf, axis=0)
            idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
            self._index = (idf, normalised(tf * idf))
        return self._index

    def search(self, query: str, k: int = 5) -> list[tuple[str, float, str]]:
        """The ``k`` nearest documents: (id, cosine similarity, text), best first."""
        if not self.ids:
            return []
        idf, matrix = self.index()
        q = normalised(term_frequencies([query], self.dim)[0] * idf)
        scores = matrix @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i]), self.texts[i]) for i in top]


# -- the commands ----------------------------------------------------------------------

@dataclass
class Document:
    """A document of the corpus: its id (unique in the session) and its text."""

    id: str
    text: str


@dataclass
class Hit:
    id: str
    score: float
    text: str


def _corpus(ctx: Context, dim: int | None = None) -> Corpus:
    corpus = ctx.state.get("corpus")
    if corpus is None:
        corpus = ctx.state["corpus"] = Corpus(dim or DIM)
    elif dim is not None and dim != corpus.dim:
        raise ValueError(f"the session's corpus has dim={corpus.dim}; clear it to change dim")
    return corpus


@command(cpu_bound=True)
def embed(texts: list[str], dim: Dim = DIM) -> dict:
    """Embed texts as hashed, L2-normalised term-frequency vectors (the same text, the same vector, anywhere).

    Args:
        texts: the texts to embed.
    """
    return {"dim": dim, "vectors": normalised(term_frequencies(texts, dim))}


@command(cpu_bound=True)
def add(documents: list[Document], ctx: Context, dim: Dim | None = None) -> dict:
    """Add documents to the session's corpus; a document whose id is already there replaces it.

    Args:
        documents: {"id", "text"} maps.
        dim: the corpus's vector length, fixed by its first add (default 1024).
    """
    corpus = _corpus(ctx, dim)
    added, batch = 0, 500
    for start in range(0, len(documents), batch):
        ctx.check()  # stop between batches once cancelled or past the deadline
        part = documents[start:start + batch]
        added += corpus.add([d.id for d in part], [d.text for d in part])
        ctx.progress(min(start + batch, len(documents)), len(documents))
    return {"added": added, "documents": len(corpus)}


@command(cpu_bound=True)
def search(query: str, ctx: Context, k: K = 5) -> dict:
    """The k documents of the session's corpus nearest to the query (cosine similarity of TF-IDF vectors)."""
    return {"hits": [Hit(*hit) for hit in _corpus(ctx).search(query, k)]}


@command(cpu_bound=True)
def search_many(queries: list[str], ctx: Context, k: K = 5) -> Generator[dict, None, dict]:
    """Search for each query; streams one chunk {"query", "hits"} per query as it is answered."""
    corpus = _corpus(ctx)
    for query in queries:
        yield {"query": query, "hits": [Hit(*hit) for hit in corpus.search(query, k)]}
    return {"queries": len(queries)}


@command
def info(ctx: Context) -> dict:
    """How many documents the session's corpus holds, and its vector length."""
    corpus = ctx.state.get("corpus")
    return {"documents": len(corpus) if corpus else 0, "dim": corpus.dim if corpus else None}


@command
def clear(ctx: Context) -> dict:
    """Drop the session's corpus."""
    corpus = ctx.state.pop("corpus", None)
    return {"removed": len(corpus) if corpus else 0}
