"""One embedder from two: sparse BM25 terms and dense semantics for every text (hybrid search)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from daveloper.documents.model import Embedder, Vectors

__all__ = ["HybridEmbedder"]

T = TypeVar("T")
U = TypeVar("U")


async def _both(first: Coroutine[Any, Any, T], second: Coroutine[Any, Any, U]) -> tuple[T, U]:
    """Await two coroutines concurrently; if one fails, cancel the other and raise its error as is.

    (A bare TaskGroup would raise an ExceptionGroup, which callers and the RPC
    layer would not recognise as the ``Unavailable`` it wraps.)
    """
    try:
        async with asyncio.TaskGroup() as tasks:
            a = tasks.create_task(first)
            b = tasks.create_task(second)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return a.result(), b.result()


class HybridEmbedder:
    """Runs a sparse and a dense embedder side by side and merges their vectors.

    Hybrid search needs both vectors on every point; keeping the two embedders
    separate lets each be cached, swapped or tested on its own.
    """

    def __init__(self, sparse: Embedder, dense: Embedder) -> None:
        if dense.dense_size is None:
            raise ValueError(f"{dense.name} produces no dense vectors")
        self.sparse = sparse
        self.dense = dense
        self.name = f"{sparse.name}+{dense.name}"
        self.dense_size: int | None = dense.dense_size

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        sparse, dense = await _both(self.sparse.embed_documents(texts), self.dense.embed_documents(texts))
        return [Vectors(sparse=s.sparse, dense=d.dense) for s, d in zip(sparse, dense, strict=True)]

    async def embed_query(self, text: str) -> Vectors:
        sparse, dense = await _both(self.sparse.embed_query(text), self.dense.embed_query(text))
        return Vectors(sparse=sparse.sparse, dense=dense.dense)

    async def aclose(self) -> None:
        """Close both embedders (those that have an ``aclose``)."""
        for inner in (self.sparse, self.dense):
            close = getattr(inner, "aclose", None)
            if close is not None:
                await close()
