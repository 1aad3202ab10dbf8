"""Embedders: texts to vectors, and :func:`make_embedder` to pick one by name.

=========  =====================================================================
name       vectors
=========  =====================================================================
``bm25``   sparse BM25 only, in process, nothing to download (the default)
``openai`` BM25 + dense from an OpenAI-compatible ``/embeddings`` endpoint
``minilm`` BM25 + dense from the bundled all-MiniLM-L6-v2 (extra ``minilm``)
=========  =====================================================================

The dense choices keep BM25 alongside, so search can be sparse, dense or
hybrid (RRF fusion) at query time; their dense half is cached in Redis when a
client is given, because it is the expensive half. BM25 is cheaper to compute
than to fetch, so it is never cached.
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.embeddings.cache import CachedEmbedder
from daveloper.documents.embeddings.hybrid import HybridEmbedder
from daveloper.documents.embeddings.minilm import MiniLMEmbedder
from daveloper.documents.embeddings.openai import OpenAIEmbedder
from daveloper.documents.model import Embedder
from daveloper.errors import ConfigError
from daveloper.redaction import OutboundRedactor

__all__ = [
    "EMBEDDERS",
    "BM25Embedder",
    "CachedEmbedder",
    "ClosableEmbedder",
    "HybridEmbedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "make_embedder",
]

#: The names :func:`make_embedder` accepts.
EMBEDDERS = ("bm25", "openai", "minilm")


class ClosableEmbedder(Embedder, Protocol):
    """An embedder that holds resources (HTTP clients, a model) until ``aclose``."""

    async def aclose(self) -> None: ...


def make_embedder(
    name: str = "bm25",
    *,
    redis: aioredis.Redis | None = None,
    cache_ttl: int = 7 * 24 * 3600,
    openai_model: str = "text-embedding-3-small",
    openai_base_url: str | None = None,
    openai_api_key: str | None = None,
    dense_size: int | None = None,
    dimensions: int | None = None,
    device: str = "cpu",
    redactor: OutboundRedactor | None = None,
    prefix: str = "dv:",
) -> ClosableEmbedder:
    """The embedder called ``name`` (see the module docstring); close it with ``aclose()``.

    ``redis`` enables the embedding cache for the dense half (its keys under ``prefix``). The ``openai_*``,
    ``dense_size`` and ``dimensions`` arguments configure ``openai``; ``device``
    configures ``minilm``. Unknown names and missing extras raise ``ConfigError``.
    """
    if name == "bm25":
        return BM25Embedder()
    dense: ClosableEmbedder
    if name == "openai":
        try:
            dense = OpenAIEmbedder(model=openai_model, base_url=openai_base_url, api_key=openai_api_key,
                                   dense_size=dense_size, dimensions=dimensions, redactor=redactor)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    elif name == "minilm":
        try:
            dense = MiniLMEmbedder(device=device)
        except ImportError as exc:
            raise ConfigError(str(exc)) from exc
    else:
        raise ConfigError(f"unknown embedder {name!r}: choose one of {', '.join(EMBEDDERS)}")
    if redis is not None:
        dense = CachedEmbedder(dense, redis, ttl=cache_ttl, prefix=prefix)
    return HybridEmbedder(BM25Embedder(), dense)
