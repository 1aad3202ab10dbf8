"""The store conformance suite at the engine seam: the same calls, the same answers, on both engines.

Each test runs on Qdrant Edge and on the qdrant-client implementation (against
qdrant-client's local mode: no Qdrant server can run here, and local mode
offers the identical client API; see ``tests/vectors/engines.py``).
ChunkStore-level behaviour (session isolation, per-session IDF, document and
metadata filters) is in ``tests/documents/test_store.py``, on the same fixture.
"""

from __future__ import annotations

import uuid

import pytest

from daveloper.errors import AlreadyExists, InvalidArgument, NotFound
from daveloper.vectors import (
    CollectionSpec,
    DenseParams,
    Distance,
    Match,
    MatchAny,
    Nearest,
    PointData,
    PointId,
    PointQuery,
    Range,
    Sparse,
    SparseParams,
    VectorEngine,
)
from tests.vectors.engines import engine_fixture  # noqa: F401  (the "engine" fixture)

pytestmark = pytest.mark.timeout(30)

SPEC = CollectionSpec(dense={"dense": DenseParams(3, Distance.COSINE)}, sparse={"sparse": SparseParams()})


def point(i: int, dense: tuple[float, ...], group: str, sparse: Sparse | None = None) -> PointData:
    vectors: dict[str, tuple[float, ...] | Sparse] = {"dense": dense}
    if sparse is not None:
        vectors["sparse"] = sparse
    return PointData(i, vectors, {"group": group, "n": i})


async def test_collections_are_created_described_listed_and_dropped(engine: VectorEngine) -> None:
    assert await engine.list_collections() == []
    await engine.create_collection("b", SPEC)
    await engine.create_collection("a", CollectionSpec(sparse={"s": SparseParams(idf=True)}))
    assert await engine.list_collections() == ["a", "b"]
    info = await engine.describe("b")
    assert (info.dense, info.sparse, info.points) == (SPEC.dense, SPEC.sparse, 0)
    assert (await engine.describe("a")).sparse == {"s": SparseParams(idf=True)}
    with pytest.raises(AlreadyExists):
        await engine.create_collection("b", SPEC)
    assert await engine.drop_collection("b") is True
    assert await engine.drop_collection("b") is False
    assert await engine.list_collections() == ["a"]
    with pytest.raises(NotFound) as missing:
        await engine.describe("b")
    assert missing.value.reason == "COLLECTION_NOT_FOUND"
    with pytest.raises(NotFound):
        await engine.count("b")


async def test_upsert_overwrites_same_ids_and_counts_filter(engine: VectorEngine) -> None:
    await engine.create_collection("c", SPEC)
    await engine.upsert("c", [point(i, (1.0, float(i), 0.0), "even" if i % 2 == 0 else "odd") for i in range(10)])
    await engine.upsert("c", [point(3, (0.0, 0.0, 1.0), "even")])  # moves point 3 to the even group
    assert await engine.count("c") == 10
    assert (await engine.describe("c")).points == 10
    assert await engine.count("c", (Match("group", "even"),)) == 6
    assert await engine.count("c", (MatchAny("group", ("even", "odd")),)) == 10
    assert await engine.count("c", (Range("n", gte=2, lt=5),)) == 3
    (three,) = await engine.retrieve("c", [3, 99], with_payload=True, with_vectors=True)
    assert (three.id, three.payload["group"]) == ("3", "even")
    assert three.vectors["dense"] == pytest.approx([0.0, 0.0, 1.0])  # cosine vectors are stored normalised


async def test_uuid_ids_read_back_in_canonical_form(engine: VectorEngine) -> None:
    await engine.create_collection("u", SPEC)
    ident = uuid.uuid4()
    await engine.upsert("u", [PointData(ident.hex, {"dense": (1.0, 0.0, 0.0)}, {})])  # unhyphenated spelling
    (found,) = await engine.retrieve("u", [str(ident)])
    assert found.id == str(ident)


async def test_delete_by_ids_and_by_filter(engine: VectorEngine) -> None:
    await engine.create_collection("d", SPEC)
    await engine.upsert("d", [point(i, (1.0, 0.0, float(i)), f"g{i % 3}") for i in range(9)])
    await engine.delete_points("d", [0, 1, 1000])
    assert await engine.count("d") == 7
    await engine.delete_where("d", (Match("group", "g2"),))
    assert sorted(int(r.id) for r in await engine.retrieve("d", list(range(9)))) == [3, 4, 6, 7]


async def test_scroll_pages_through_every_matching_point(engine: VectorEngine) -> None:
    await engine.create_collection("s", SPEC)
    await engine.upsert("s", [point(i, (1.0, 1.0, float(i)), "a" if i < 700 else "b") for i in range(800)])
    seen: list[str] = []
    offset: PointId | None = None
    while True:
        page, offset = await engine.scroll("s", (Match("group", "a"),), limit=256, offset=offset)
        assert len(page) <= 256
        seen += [r.id for r in page]
        if offset is None:
            break
    assert sorted(map(int, seen)) == list(range(700))


async def test_dense_sparse_and_fused_queries_with_filters(engine: VectorEngine) -> None:
    await engine.create_collection("q", SPEC)
    await engine.upsert("q", [
        point(1, (1.0, 0.0, 0.0), "x", Sparse((1,), (1.0,))),
        point(2, (0.0, 1.0, 0.0), "x", Sparse((2,), (1.0,))),
        point(3, (0.7, 0.7, 0.0), "y", Sparse((1, 2), (0.5, 0.5))),
    ])
    dense = await engine.query_points("q", PointQuery((Nearest("dense", (1.0, 0.1, 0.0)),), limit=3))
    assert [r.id for r in dense] == ["1", "3", "2"]
    assert dense[0].score > dense[1].score > dense[2].score
    assert dense[0].payload == {"group": "x", "n": 1}
    sparse = await engine.query_points("q", PointQuery((Nearest("sparse", Sparse((2,), (1.0,))),), limit=3))
    assert [r.id for r in sparse] == ["2", "3"]  # sparse search finds only points sharing a term
    only_x = await engine.query_points("q", PointQuery((Nearest("dense", (0.7, 0.7, 0.0)),), limit=3,
                                                       where=(Match("group", "x"),), with_payload=False))
    assert {r.id for r in only_x} == {"1", "2"}
    assert only_x[0].payload == {}
    # Dense ranks 1, 3, 2; sparse 2, 3. RRF with Qdrant's k = 2 scores rank r (from 1) as 1/(r + 1):
    # 2 gets 1/4 + 1/2, 3 gets 1/3 + 1/3, 1 gets 1/2.
    fused = await engine.query_points("q", PointQuery(
        (Nearest("dense", (1.0, 0.1, 0.0)), Nearest("sparse", Sparse((2,), (1.0,)))), limit=3, depth=10))
    assert [r.id for r in fused] == ["2", "3", "1"]
    assert [r.score for r in fused] == pytest.approx([1 / 4 + 1 / 2, 2 / 3, 1 / 2])


async def test_idf_corpus_limits_the_statistics(engine: VectorEngine) -> None:
    await engine.create_collection("i", CollectionSpec(sparse={"s": SparseParams(idf=True)}))
    mine = [PointData(i, {"s": Sparse((1,) if i == 0 else (2,), (1.0,))}, {"t": "me"}) for i in range(4)]
    others = [PointData(100 + i, {"s": Sparse((1,), (1.0,))}, {"t": "other"}) for i in range(30)]
    await engine.upsert("i", mine + others)
    query = Sparse((1,), (1.0,))
    scoped = (Match("t", "me"),)
    (alone,) = await engine.query_points("i", PointQuery((Nearest("s", query, idf_corpus=scoped),), limit=1,
                                                         where=scoped))
    (pooled,) = await engine.query_points("i", PointQuery((Nearest("s", query, idf_corpus=()),), limit=1,
                                                          where=scoped))
    assert alone.id == pooled.id == "0"
    assert alone.score > pooled.score  # term 1 is rare among "me", common over everything


async def test_vectors_that_do_not_fit_are_invalid_arguments(engine: VectorEngine) -> None:
    await engine.create_collection("v", SPEC)
    with pytest.raises(InvalidArgument):
        await engine.upsert("v", [PointData(1, {"dense": (1.0, 0.0)}, {})])
    with pytest.raises(InvalidArgument):
        await engine.query_points("v", PointQuery((Nearest("dense", (1.0, 0.0)),), limit=1))
    with pytest.raises(InvalidArgument):
        await engine.query_points("v", PointQuery((Nearest("nope", (1.0, 0.0, 0.0)),), limit=1))
    assert await engine.count("v") == 0
