"""ChunkStore and DocumentSearch on both vector engines: storage, session isolation, IDF, RRF.

Part of the store conformance suite: every test taking ``engine`` runs once on
Qdrant Edge and once through qdrant-client (see ``tests/vectors/engines.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from qdrant_client import AsyncQdrantClient

from daveloper.documents.embeddings import BM25Embedder
from daveloper.documents.model import ChunkDraft, SearchMode, Vectors
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import DENSE, SPARSE, ChunkStore, chunk_id
from daveloper.errors import ConfigError, FailedPrecondition, InvalidArgument, Unavailable
from daveloper.vectors import DenseParams, Distance, IndexKind, SparseParams, VectorEngine
from daveloper.vectors.edge import EdgeEngine
from daveloper.vectors.remote import RemoteEngine
from tests.vectors.engines import engine_fixture  # noqa: F401  (the "engine" fixture)

pytestmark = pytest.mark.timeout(30)

BM25 = BM25Embedder()




def drafts(texts: Sequence[str]) -> list[ChunkDraft]:
    return [ChunkDraft(index=i, text=t, token_count=len(t.split()), heading_path=("Guide", f"S{i}"),
                       start_line=i * 10 + 1, end_line=i * 10 + 9) for i, t in enumerate(texts)]


async def store_texts(store: ChunkStore, session: str, document: str, texts: Sequence[str], *,
                      ingestion: str = "ing-1", dense: Sequence[Sequence[float]] | None = None,
                      metadata: dict[str, str] | None = None) -> None:
    vectors = await BM25.embed_documents(texts)
    if dense is not None:
        vectors = [Vectors(sparse=v.sparse, dense=tuple(d)) for v, d in zip(vectors, dense, strict=True)]
    await store.upsert(session, document, ingestion, drafts(texts), vectors, document_name=f"{document}.md",
                       source_uri=f"file:///{document}.md", metadata=metadata or {})


async def sparse_search(store: ChunkStore, session: str, query: str, **kwargs: object) -> list[str]:
    hits = await store.search(session, await BM25.embed_query(query), top_k=5, mode=SearchMode.SPARSE,
                              **kwargs)  # type: ignore[arg-type]
    return [h.text for h in hits]


async def test_collection_has_idf_sparse_and_cosine_dense_vectors(engine: VectorEngine) -> None:
    await ChunkStore(engine, dense_size=4).ensure_collection()
    info = await engine.describe("dv_chunks")
    assert info.sparse == {SPARSE: SparseParams(idf=True)}
    assert info.dense == {DENSE: DenseParams(4, Distance.COSINE)}
    if isinstance(engine, EdgeEngine):  # local mode keeps no payload indexes; Edge and servers do
        assert info.indexes == {"session_id": IndexKind.TENANT, "document_id": IndexKind.KEYWORD,
                                "ingestion_id": IndexKind.KEYWORD, "index": IndexKind.INTEGER}
    # The same collection cannot serve an embedder of another size.
    with pytest.raises(ConfigError, match="dense"):
        await ChunkStore(engine, dense_size=8).ensure_collection()
    await ChunkStore(engine).ensure_collection()  # sparse-only use of a dense collection is fine


async def test_upsert_stores_payload_and_is_idempotent(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    texts = [f"chapter {i} explains topic{i}" for i in range(5)]
    await store_texts(store, "s1", "doc_a", texts, metadata={"lang": "en"})
    await store_texts(store, "s1", "doc_a", texts, metadata={"lang": "en"})
    assert await store.count("s1") == 5
    assert await store.count("s1", "doc_a") == 5
    assert await store.count("s1", "doc_b") == 0

    page = await store.chunks("s1", "doc_a", offset=1, limit=3)
    assert [h.index for h in page] == [1, 2, 3]
    hit = page[0]
    assert hit.chunk_id == chunk_id("s1", "doc_a", 1, "ing-1")
    assert (hit.document_id, hit.text, hit.token_count) == ("doc_a", texts[1], 4)
    assert (hit.heading_path, hit.start_line, hit.end_line) == (("Guide", "S1"), 11, 19)
    assert (hit.document_name, hit.source_uri, hit.metadata) == ("doc_a.md", "file:///doc_a.md", {"lang": "en"})
    record = (await engine.retrieve("dv_chunks", [hit.chunk_id], with_payload=True))[0]
    assert (record.payload["session_id"], record.payload["ingestion_id"], record.payload["embedder"]) == (
        "s1", "ing-1", "bm25")
    assert await store.chunks("s1", "doc_a", offset=4, limit=3) == [
        h for h in await store.chunks("s1", "doc_a", offset=0, limit=10) if h.index == 4]


async def test_many_chunks_page_in_order(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    texts = [f"line {i}" for i in range(600)]  # more than one engine batch
    await store_texts(store, "s", "big", texts)
    assert await store.count("s", "big") == 600
    page = await store.chunks("s", "big", offset=590, limit=20)
    assert [h.index for h in page] == list(range(590, 600))


async def test_sessions_never_see_or_delete_each_others_chunks(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    await store_texts(store, "alice", "doc_x", ["the secret launch code is rosebud"])
    await store_texts(store, "bob", "doc_y", ["bob's notes about launch rockets"])
    assert await sparse_search(store, "bob", "launch code rosebud") == ["bob's notes about launch rockets"]
    assert await sparse_search(store, "mallory", "launch code rosebud") == []
    # Bob names Alice's document: nothing of Alice's goes.
    await store.delete_document("bob", "doc_x")
    await store.delete_session("bob")
    assert await store.count("alice") == 1
    assert await store.count("bob") == 0
    assert await sparse_search(store, "alice", "rosebud") == ["the secret launch code is rosebud"]


async def test_delete_document_and_ingestion(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    await store_texts(store, "s", "doc_1", ["one", "two"], ingestion="ing-1")
    await store_texts(store, "s", "doc_2", ["three"], ingestion="ing-2")
    await store_texts(store, "s", "doc_3", ["four"], ingestion="ing-3")
    await store.delete_ingestion("s", "ing-2")
    assert await store.count("s", "doc_2") == 0
    assert await store.count("s") == 3
    await store.delete_document("s", "doc_1")
    assert await store.count("s") == 1


async def test_filters_by_document_and_metadata(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    await store_texts(store, "s", "doc_py", ["retry with exponential backoff"], metadata={"lang.code": "py"})
    await store_texts(store, "s", "doc_go", ["retry loops with backoff in go"], metadata={"lang.code": "go"})
    assert len(await sparse_search(store, "s", "retry backoff")) == 2
    assert await sparse_search(store, "s", "retry backoff", document_ids=["doc_go"]) == [
        "retry loops with backoff in go"]
    # A key with a dot is one metadata entry, not a nested path.
    assert await sparse_search(store, "s", "retry backoff", metadata_filter={"lang.code": "py"}) == [
        "retry with exponential backoff"]


async def test_idf_comes_from_qdrant_and_from_the_session_only(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    # "python" is in every text of this session, "tuple" in one: without IDF the thrice-repeated
    # common term would win; with it the rare term decides.
    await store_texts(store, "s", "d", ["python python python", "tuple", "python dicts", "python sets"])
    before = await store.search("s", await BM25.embed_query("python tuple"), top_k=5, mode=SearchMode.SPARSE)
    assert before[0].text == "tuple"
    tf_part = BM25.document_vector("tuple").values[0]
    idf = math.log((4 - 1 + 0.5) / (1 + 0.5) + 1)  # Qdrant's BM25 IDF, N=4 texts, df=1
    assert before[0].score == pytest.approx(tf_part * idf, rel=1e-5)
    # Another session full of "tuple" changes nothing for this one.
    await store_texts(store, "other", "d", [f"tuple {i}" for i in range(30)])
    after = await store.search("s", await BM25.embed_query("python tuple"), top_k=5, mode=SearchMode.SPARSE)
    assert [h.chunk_id for h in after] == [h.chunk_id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])


async def test_collection_wide_idf_when_asked(engine: VectorEngine) -> None:
    store = ChunkStore(engine, session_idf=False)
    await store_texts(store, "s", "d", ["python tuple", "python dicts"])
    query = await BM25.embed_query("tuple")
    (before,) = await store.search("s", query, top_k=1, mode=SearchMode.SPARSE)
    await store_texts(store, "other", "d", [f"tuple {i}" for i in range(10)])
    (after,) = await store.search("s", query, top_k=1, mode=SearchMode.SPARSE)
    assert after.score < before.score  # "tuple" became common collection-wide


async def test_dense_and_hybrid_rrf(engine: VectorEngine) -> None:
    store = ChunkStore(engine, dense_size=3)
    texts = ["kubernetes pods", "docker images", "helm charts"]
    await store_texts(store, "s", "d", texts, dense=[(1, 0, 0), (0, 1, 0), (0.6, 0.8, 0)])
    query = await BM25.embed_query("docker")
    dense = await store.search("s", Vectors(sparse=query.sparse, dense=(1.0, 0.0, 0.0)), top_k=3,
                               mode=SearchMode.DENSE)
    assert [h.text for h in dense] == ["kubernetes pods", "helm charts", "docker images"]
    hybrid = await store.search("s", Vectors(sparse=query.sparse, dense=(0.5, 0.87, 0.0)), top_k=3,
                                mode=SearchMode.HYBRID)
    # "docker images" leads both lists; RRF puts it first, and dense-only matches follow.
    assert next(h.text for h in hybrid) == "docker images"
    assert {h.text for h in hybrid} == set(texts)
    # A query of stop words only has no sparse side: hybrid degrades to dense.
    empty = await BM25.embed_query("the of and")
    fallback = await store.search("s", Vectors(sparse=empty.sparse, dense=(1.0, 0.0, 0.0)), top_k=1,
                                  mode=SearchMode.HYBRID)
    assert [h.text for h in fallback] == ["kubernetes pods"]
    assert await sparse_search(store, "s", "the of and") == []


async def test_document_search_defaults_limits_and_errors(engine: VectorEngine) -> None:
    store = ChunkStore(engine)
    await store_texts(store, "s", "d", [f"note {i} about caching" for i in range(12)])
    search = DocumentSearch(store, BM25, default_top_k=3, max_top_k=5)
    assert search.default_mode() is SearchMode.SPARSE
    assert len(await search.search("s", "caching")) == 3
    assert len(await search.search("s", "caching", top_k=100)) == 5
    with pytest.raises(InvalidArgument) as empty:
        await search.search("s", "   ")
    assert empty.value.violations == [("query", "must not be empty")]
    with pytest.raises(InvalidArgument):
        await search.search("s", "x", metadata_filter={'bad"key': "v"})
    for mode in (SearchMode.DENSE, SearchMode.HYBRID):
        with pytest.raises(FailedPrecondition) as caught:
            await search.search("s", "caching", mode=mode)
        assert caught.value.reason == "DENSE_UNAVAILABLE"


async def test_qdrant_down_is_unavailable() -> None:
    client = AsyncQdrantClient(url="http://127.0.0.1:1", timeout=1, check_compatibility=False)
    try:
        with pytest.raises(Unavailable):
            await ChunkStore(RemoteEngine(client)).ensure_collection()
    finally:
        await client.close()
