"""Retrieval as data: embedders, in-session indexes, ``retrieve``, and retrieve -> generate programs.

* An embedder is configured like an LM (``configure_embedder``): a provider's
  embedding model through ``dspy.Embedder`` (litellm, whose first use costs
  seconds; the worker imports it when the embedder is configured), or
  ``offline`` (``offline_embed``: deterministic, in the worker). DSPy's
  embedding cache stays off (it is process-wide and keyed without api_base).
* An index is a corpus sent as data, embedded in batches (progress events,
  cancel and deadline checked between batches) and held in the scope as one
  float32 matrix. Search is DSPy's own ``dspy.retrievers.Embeddings``
  arithmetic (rows and query scaled to unit length, dot product, top k by
  ``argsort``), called directly: ``Embeddings`` starts a batching thread per
  instance and switches to FAISS above 20,000 passages, and the corpus limit
  here is far below that.
* A program declared with ``retrieve: {index_id, query, context, k}`` is
  ``RetrieveThenGenerate``: its ``query`` input is searched and the passages
  fill its ``context`` input before the predictor runs, as the RAG module of
  DSPy's tutorial does. The index is looked up by id at every run (in the
  program's scope, then the global one) through a DSPy setting, so it works
  in the threads DSPy's optimisers and ``Evaluate`` start.

Memory is bounded: passages per index, characters per passage, dimensions,
bytes per index (``catalog``), indexes per scope and bytes of all indexes of
the worker (``state``); ``describe`` shows them. Imported after the gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dspy
import numpy as np

from ...errors import BridgeError, validation_error
from ...redaction import register_secret
from . import offline_embed
from .lms import _public_base, deadline_step
from .catalog import MAX_DIMS, MAX_INDEX_BYTES, MAX_K
from .classify import in_caller_terms
from .inrequest import INDEXES
from .state import Scope

DEFAULT_K = 5
DEFAULT_BATCH = 200  # dspy.Embedder's default


@dataclass
class EmbedderConfig:
    model: str
    embedder: object  # dspy.Embedder
    settings: dict  # never the API key
    timeout_s: float | None
    local: bool

    def describe(self) -> dict:
        return {"model": self.model, **self.settings}

    def embed(self, texts: list[str], remaining: float | None = None) -> np.ndarray:
        """``(len(texts), dims)`` float32 rows; provider failures become LM error categories."""
        kwargs = {}
        if not self.local:
            step = deadline_step(remaining)
            if step is not None and (self.timeout_s is None or step < self.timeout_s):
                kwargs["timeout"] = step
        try:
            vectors = self.embedder(texts, **kwargs)
        except BridgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - litellm's and the provider's errors, by status
            raise embedding_failure(exc, self.model) from None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or not 0 < vectors.shape[1] <= MAX_DIMS \
                or not np.isfinite(vectors).all():
            raise BridgeError("lm_unavailable", "bad_embeddings", f"the embedding model {self.model!r} answered "
                              f"{len(texts)} texts with an array of shape {list(vectors.shape)}; expected one "
                              f"finite vector of at most {MAX_DIMS} numbers per text", {"model": self.model})
        return vectors


def embedding_failure(exc: Exception, model: str) -> BridgeError:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    if status in (401, 403):
        category, code = "lm_auth", "auth_failed"
    elif status == 429:
        category, code = "lm_rate_limit", "rate_limited"
    elif status in (400, 404, 413, 422):
        category, code = "lm_invalid_request", "invalid_request"
    elif "Timeout" in name:
        category, code = "lm_unavailable", "provider_timeout"
    else:
        category, code = "lm_unavailable", "embedding_failed"
    details = {"exception": name, "model": model}
    if isinstance(status, int):
        details["status"] = status
    return BridgeError(category, code, in_caller_terms(f"{name}: {exc}")[:2000], details)


def build_embedder(args: dict) -> EmbedderConfig:
    """An embedder from checked ``configure_embedder`` args."""
    model, api_key = args["model"], args.get("api_key")
    if api_key:
        register_secret(api_key)
    batch = args.get("batch_size", DEFAULT_BATCH)
    settings = {"dimensions": args.get("dimensions"), "batch_size": batch, "num_retries": args.get("num_retries"),
                "timeout_s": args.get("timeout_s"),
                "api_base": _public_base(args["api_base"]) if args.get("api_base") else None,
                "api_key_set": bool(api_key)}
    settings = {k: v for k, v in settings.items() if v is not None}
    if model == offline_embed.MODEL:
        if api_key or args.get("api_base"):
            raise validation_error("offline_takes_no_endpoint", "the offline embedder runs in the worker: "
                                   "give it no api_key or api_base")
        dims = args.get("dimensions", offline_embed.DEFAULT_DIMS)
        settings["dimensions"] = dims
        embedder = dspy.Embedder(offline_embed.embedder(dims), batch_size=batch, caching=False)
        return EmbedderConfig(model, embedder, settings, None, True)
    kwargs = {"num_retries": args.get("num_retries", 3)}
    for key, value in (("api_key", api_key), ("api_base", args.get("api_base")), ("timeout", args.get("timeout_s")),
                       ("dimensions", args.get("dimensions"))):
        if value is not None:
            kwargs[key] = value
    settings.setdefault("num_retries", kwargs["num_retries"])
    from dspy.clients._litellm import get_litellm

    get_litellm(feature="dspy.Embedder")  # its import costs seconds: pay it here, not in the first create_index
    return EmbedderConfig(model, dspy.Embedder(model, batch_size=batch, caching=False, **kwargs), settings,
                          args.get("timeout_s"), False)


def resolve_embedder(scope: Scope, global_scope: Scope) -> EmbedderConfig:
    config = scope.embedder or global_scope.embedder
    if config is None:
        raise BridgeError("validation", "no_embedder_configured",
                          "no embedder is configured for this session or globally: configure one first "
                          "(configure_embedder with a model such as 'openai/text-embedding-3-small' and its api_key, "
                          "or 'offline', the built-in deterministic embedder)",
                          {"hint": "configure_embedder"})
    return config


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """As ``dspy.retrievers.Embeddings._normalize``."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-10)


@dataclass
class Hits:
    passages: list
    indices: list
    scores: list

    def to_json(self) -> dict:
        return {"passages": self.passages, "indices": self.indices, "scores": self.scores}


@dataclass
class Index:
    index_id: str
    passages: list
    vectors: np.ndarray  # unit rows, float32, C-contiguous
    embedder: EmbedderConfig  # queries are embedded by the model that embedded the corpus
    k: int
    nbytes: int
    created_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"index_id": self.index_id, "count": len(self.passages), "dimensions": int(self.vectors.shape[1]),
                "bytes": self.nbytes, "k": self.k, "embedder": self.embedder.model,
                "created_at": round(self.created_at, 3)}

    def search(self, query: str, k: int | None = None, remaining: float | None = None) -> Hits:
        query_vector = unit_rows(self.embedder.embed([query], remaining))
        if query_vector.shape[1] != self.vectors.shape[1]:
            raise BridgeError("lm_unavailable", "bad_embeddings", f"the query's vector has "
                              f"{query_vector.shape[1]} dimensions, the index's {self.vectors.shape[1]}",
                              {"index_id": self.index_id})
        scores = np.einsum("qd,kd->qk", query_vector, self.vectors, order="C")[0]
        top = np.argsort(-scores)[: k or self.k]
        return Hits([self.passages[i] for i in top], top.tolist(), scores[top].tolist())


def build_index(ctx, config: EmbedderConfig, index_id: str, corpus: list[str], k: int) -> Index:
    """Embed ``corpus`` in the embedder's batches (progress events; cancel and deadline between batches)."""
    text_bytes = sum(len(p.encode()) for p in corpus)
    batch = config.embedder.batch_size
    rows, total = [], len(corpus)
    ctx.emit("progress", {"embedded": 0, "total": total})
    for start in range(0, total, batch):
        ctx.check()
        part = config.embed(corpus[start:start + batch], ctx.remaining())
        if rows and part.shape[1] != rows[0].shape[1]:
            raise BridgeError("lm_unavailable", "bad_embeddings", "the embedding model changed dimensions "
                              "between batches", {"model": config.model})
        rows.append(part.astype(np.float32, copy=False))
        nbytes = text_bytes + total * part.shape[1] * 4
        if nbytes > MAX_INDEX_BYTES:
            raise validation_error("index_too_large", f"this corpus of {total} passages at {part.shape[1]} "
                                   f"dimensions needs {nbytes} bytes; an index holds at most {MAX_INDEX_BYTES}",
                                   bytes=nbytes, max_index_bytes=MAX_INDEX_BYTES)
        ctx.emit("progress", {"embedded": min(start + batch, total), "total": total})
    vectors = np.ascontiguousarray(unit_rows(np.concatenate(rows)), dtype=np.float32)
    return Index(index_id, list(corpus), vectors, config, k, text_bytes + vectors.nbytes)


# -- retrieve -> generate ---------------------------------------------------------------

CONTEXT_TYPES = ("str", "list[str]")


def check_pipeline(doc: dict, signature_spec: dict, path: str = "args.retrieve") -> dict:
    """A program's ``retrieve`` declaration, checked against its signature; returns it with defaults."""
    inputs = signature_spec["inputs"]
    query, context = doc.get("query", "question"), doc.get("context", "context")
    if inputs.get(query, {}).get("type") != "str":
        raise validation_error("bad_pipeline", f"{path}.query: {query!r} must be a str input of the signature",
                               path=f"{path}.query")
    if context == query or inputs.get(context, {}).get("type") not in CONTEXT_TYPES:
        raise validation_error("bad_pipeline", f"{path}.context: {context!r} must be another input of the "
                               f"signature, of type str or list[str] (the retrieved passages fill it)",
                               path=f"{path}.context")
    if len(inputs) < 2:
        raise validation_error("bad_pipeline", f"{path}: the signature needs the query input besides the context",
                               path=path)
    checked = {"index_id": doc["index_id"], "query": query, "context": context}
    k = doc.get("k")
    if k is not None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise validation_error("bad_pipeline", f"{path}.k: an integer from 1 to {MAX_K}", path=f"{path}.k")
        checked["k"] = k
    return checked


class RetrieveThenGenerate(dspy.Module):
    """``query`` -> the index's top ``k`` passages as ``context`` -> the predictor, as DSPy's RAG tutorial."""

    def __init__(self, generate, pipeline: dict) -> None:
        super().__init__()
        self.generate = generate
        self.pipeline = dict(pipeline)

    def forward(self, **inputs):
        find = dspy.settings.get(INDEXES)
        if find is None:
            raise BridgeError("execution", "no_index_lookup", "this program retrieves; it runs only in a request")
        pipe = self.pipeline
        hits = find(pipe["index_id"]).search(str(inputs[pipe["query"]]), pipe.get("k"))
        prediction = self.generate(**inputs, **{pipe["context"]: hits.passages})
        prediction._portbridge_retrieved = {"index_id": pipe["index_id"], **hits.to_json()}
        return prediction
