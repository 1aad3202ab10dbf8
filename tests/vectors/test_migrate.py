"""A data dir written by earlier versions (qdrant-client local mode) moves into Qdrant Edge on first start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from daveloper.config import Settings
from daveloper.documents.embeddings import BM25Embedder
from daveloper.documents.model import ChunkDraft, SearchMode
from daveloper.documents.store import CHUNK_INDEXES, ChunkStore
from daveloper.infra.qdrant import open_qdrant
from daveloper.vectors import CollectionSpec, DenseParams, Distance, IndexKind, PointData, SparseParams
from daveloper.vectors.edge import EdgeEngine
from daveloper.vectors.migrate import MIGRATED_SUFFIX
from daveloper.vectors.remote import RemoteEngine

pytestmark = pytest.mark.timeout(60)

BM25 = BM25Embedder()
TEXTS = [f"section {i} covers topic{i % 7} and retry backoff" for i in range(700)]


async def write_old_data_dir(data_dir: Path) -> list[float]:
    """What earlier versions left: chunks and a raw-points collection in local mode under data_dir/qdrant.

    Returns the top scores of a search, to compare after the migration (the texts tie, so ids may not).
    """
    old = RemoteEngine(AsyncQdrantClient(path=str(data_dir / "qdrant")))
    try:
        store = ChunkStore(old)
        drafts = [ChunkDraft(index=i, text=t, token_count=len(t.split())) for i, t in enumerate(TEXTS)]
        await store.upsert("alice", "doc", "ing-1", drafts, await BM25.embed_documents(TEXTS), document_name="d.md")
        await store.upsert("bob", "doc", "ing-2", drafts[:5], await BM25.embed_documents(TEXTS[:5]))
        await old.create_collection("dv_v_0123456789abcdef_notes", CollectionSpec(
            dense={"dense": DenseParams(2, Distance.DOT)}, sparse={"sparse": SparseParams()}))
        await old.upsert("dv_v_0123456789abcdef_notes", [PointData(7, {"dense": (0.5, 2.0)}, {"k": "v"})])
        hits = await store.search("alice", await BM25.embed_query("topic3 backoff"), top_k=5, mode=SearchMode.SPARSE)
        return [h.score for h in hits]
    finally:
        await old.close()


async def test_local_mode_data_dir_is_migrated_once(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = await write_old_data_dir(data_dir)
    settings = Settings(data_dir=data_dir)
    with caplog.at_level(logging.INFO, logger="daveloper.vectors.migrate"):
        async with open_qdrant(settings) as engine:
            assert isinstance(engine, EdgeEngine)
            assert await engine.list_collections() == ["dv_chunks", "dv_v_0123456789abcdef_notes"]
            store = ChunkStore(engine)
            assert await store.count("alice") == 700
            assert await store.count("bob") == 5
            hits = await store.search("alice", await BM25.embed_query("topic3 backoff"), top_k=5,
                                      mode=SearchMode.SPARSE)
            assert [h.score for h in hits] == pytest.approx(expected, rel=1e-5)  # same IDF, same scores
            assert all("topic3" in h.text for h in hits)
            assert hits[0].document_name == "d.md"
            # Local mode kept no payload indexes; the store adds them on first use.
            assert (await engine.describe("dv_chunks")).indexes == CHUNK_INDEXES
            notes = await engine.describe("dv_v_0123456789abcdef_notes")
            assert (notes.dense, notes.sparse, notes.points) == (
                {"dense": DenseParams(2, Distance.DOT)}, {"sparse": SparseParams()}, 1)
            (raw,) = await engine.retrieve("dv_v_0123456789abcdef_notes", [7], with_payload=True, with_vectors=True)
            assert (raw.payload, raw.vectors["dense"]) == ({"k": "v"}, [0.5, 2.0])
    assert not (data_dir / "qdrant").exists()
    assert (data_dir / f"qdrant{MIGRATED_SUFFIX}").is_dir()
    messages = [r.getMessage() for r in caplog.records]
    assert any("migrated collection dv_chunks: 705 points" in m for m in messages), messages
    assert any(m.startswith("migrated 706 points") for m in messages), messages

    caplog.clear()
    async with open_qdrant(settings) as engine:  # the second start finds nothing to migrate
        assert await ChunkStore(engine).count("alice") == 700
    assert not any("migrat" in r.getMessage() for r in caplog.records)


async def test_a_migration_cut_short_is_redone(data_dir: Path) -> None:
    await write_old_data_dir(data_dir)
    # A first attempt copied part of a collection and stopped before renaming the old store.
    partial = EdgeEngine.open(data_dir / "qdrant-edge")
    try:
        await partial.create_collection("dv_chunks", CollectionSpec(sparse={"bm25": SparseParams(idf=True)},
                                                                   indexes={"session_id": IndexKind.TENANT}))
        await partial.upsert("dv_chunks", [PointData(1, {}, {"session_id": "stale"})])
    finally:
        await partial.close()
    async with open_qdrant(Settings(data_dir=data_dir)) as engine:
        assert await engine.count("dv_chunks") == 705
        assert await ChunkStore(engine).count("stale") == 0
