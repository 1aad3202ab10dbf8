"""Versions at the store level: the catalog's hidden set and DocumentSearch's re-check, on both vector engines."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from daveloper.documents.catalog import Catalog
from daveloper.documents.embeddings import BM25Embedder
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.documents.versions import commit_version, discard_version
from daveloper.vectors import PointQuery, Record, VectorEngine
from generated.daveloper.v1 import Document
from tests.documents.test_store import store_texts
from tests.vectors.engines import engine_fixture  # noqa: F401  (the "engine" fixture)

pytestmark = pytest.mark.timeout(30)


class GatedEngine:
    """The real engine, whose next query waits until the test opens the gate (to order a race)."""

    def __init__(self, inner: VectorEngine) -> None:
        self._inner = inner
        self.querying = asyncio.Event()
        self.gate: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        if (gate := self.gate) is not None:
            self.gate = None
            self.querying.set()
            await gate.wait()
        return await self._inner.query_points(collection, query)


def draft(ingestion: str, text: str) -> Document:
    return Document(id="doc_m", name="m.md", content_hash=text, size_bytes=len(text), chunk_count=2,
                    ingestion_id=ingestion, create_time=datetime.datetime.now(datetime.UTC))


async def write(catalog: Catalog, store: ChunkStore, ingestion: str, revision: int) -> str:
    await catalog.stage("s1", "doc_m", ingestion)
    texts = [f"zebracorn revision {revision} part {i}" for i in range(2)]
    await store_texts(store, "s1", "doc_m", texts, ingestion=ingestion)
    return " ".join(texts)


async def test_a_search_that_raced_a_replacement_searches_again(engine: VectorEngine, redis: aioredis.Redis) -> None:
    gated = GatedEngine(engine)
    store = ChunkStore(gated)  # type: ignore[arg-type]
    catalog = Catalog(redis, prefix="dvtest:")
    search = DocumentSearch(store, BM25Embedder(), catalog=catalog)
    first = await commit_version(catalog, store, "s1", draft("ing-1", await write(catalog, store, "ing-1", 1)),
                                 replacing=None)
    assert first.version == 1

    async def revisions() -> set[str]:
        return {hit.text.split()[2] for hit in await search.search("s1", "zebracorn", top_k=10)}

    assert await revisions() == {"1"}
    # Version 2 is written (hidden). A search reads the hidden set, then its query waits...
    text = await write(catalog, store, "ing-2", 2)
    assert await revisions() == {"1"}
    gate = gated.gate = asyncio.Event()
    racing = asyncio.create_task(revisions())
    await gated.querying.wait()
    # ... while version 2 replaces version 1 and version 1's points are deleted.
    second = await commit_version(catalog, store, "s1", draft("ing-2", text), replacing=first)
    assert (second.version, second.create_time) == (2, first.create_time)
    assert await store.count("s1") == 2
    gate.set()
    assert await racing == {"2"}  # not set() (neither version): it saw the hidden set change and searched again
    assert (await catalog.visibility("s1"))[1] == []


async def test_discarding_the_current_version_keeps_its_points(engine: VectorEngine, redis: aioredis.Redis) -> None:
    # A replacement cancelled just after its commit runs its failure path on the version now current.
    store, catalog = ChunkStore(engine), Catalog(redis, prefix="dvtest:")
    first = await commit_version(catalog, store, "s1", draft("ing-1", await write(catalog, store, "ing-1", 1)),
                                 replacing=None)
    text = await write(catalog, store, "ing-2", 2)
    await commit_version(catalog, store, "s1", draft("ing-2", text), replacing=first)
    await discard_version(catalog, store, "s1", "ing-2")
    assert await store.count("s1") == 2
    assert [h.text for h in await store.chunks("s1", "doc_m", ingestion_id="ing-2")] == [
        "zebracorn revision 2 part 0", "zebracorn revision 2 part 1"]
    # A version still hidden (staged, never committed) is removed.
    await write(catalog, store, "ing-3", 3)
    await discard_version(catalog, store, "s1", "ing-3")
    assert await store.count("s1") == 2
    assert (await catalog.visibility("s1"))[1] == []
