"""Qdrant Edge's engine process and its maintenance: optimized segments, reclaimed deletes, same answers.

Edge only (the qdrant-client implementation leaves optimization to the server).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import qdrant_edge as qe

from daveloper.errors import Unavailable
from daveloper.vectors import (
    CollectionSpec,
    DenseParams,
    IndexKind,
    Match,
    Nearest,
    PointData,
    PointQuery,
    Range,
    Sparse,
    SparseParams,
)
from daveloper.vectors.edge import EdgeEngine
from daveloper.vectors.model import ShardStats

pytestmark = pytest.mark.timeout(60)

DIM = 384  # wide enough that a thousand points pass the indexing threshold (1,000 KB of vectors)
SPEC = CollectionSpec(dense={"dense": DenseParams(DIM)}, sparse={"bm25": SparseParams(idf=True)},
                      indexes={"session_id": IndexKind.TENANT, "n": IndexKind.INTEGER})


def dense(rng: random.Random) -> tuple[float, ...]:
    return tuple(rng.gauss(0.0, 1.0) for _ in range(DIM))


def points(count: int, seed: int = 1) -> list[PointData]:
    rng = random.Random(seed)
    # Distinct sparse weights: equal scores would leave the order of ties to the segment layout.
    return [PointData(i, {"dense": dense(rng), "bm25": Sparse((i % 50, 100 + i % 7), (1.0 + i / 1000, 0.5))},
                      {"session_id": "s", "n": i}) for i in range(count)]


def queries(stored: list[PointData]) -> list[PointQuery]:
    """Dense queries near stored points, sparse ones, and fused ones, all filtered by session."""
    rng, where, asked = random.Random(2), (Match("session_id", "s"),), []
    for p in stored[:: len(stored) // 5]:
        near = tuple(v + rng.gauss(0.0, 0.05) for v in p.vectors["dense"])  # type: ignore[union-attr]
        term = Sparse((int(p.payload["n"]) % 50,), (1.0,))
        asked += [PointQuery((Nearest("dense", near),), limit=1, where=where),
                  PointQuery((Nearest("bm25", term, idf_corpus=where),), limit=10, where=where),
                  PointQuery((Nearest("bm25", term, idf_corpus=where), Nearest("dense", near)), limit=5,
                             where=where, depth=20)]
    return asked


async def answers(engine: EdgeEngine, asked: list[PointQuery]) -> list[list[tuple[float, str]]]:
    """Each query's hits as (score, id), best first, equal scores ordered by id, not by segment layout.

    RRF scores tie often: of the hits tied at a fused query's cut-off, which ones make the limit is
    arbitrary, so those are left out.
    """
    answered = []
    for query in asked:
        hits = sorted((-round(r.score, 4), r.id) for r in await engine.query_points("c", query))
        if len(query.nearest) > 1:
            hits = [hit for hit in hits if hit[0] < hits[-1][0]]
        answered.append(hits)
    return answered


async def until_maintained(engine: EdgeEngine, points: int) -> ShardStats:
    """Stats once both vectors of ``points`` points are in optimized segments (idle maintenance ran)."""
    # The state lives in the engine process, which signals nothing: poll it (stats do not defer maintenance).
    while (stats := await engine.stats("c")).indexed_vectors != 2 * points:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return stats


async def test_idle_maintenance_optimizes_and_answers_alike(tmp_path: Path) -> None:
    engine = EdgeEngine.open(tmp_path, idle_seconds=0.2, maintain_every=100_000)
    try:
        await engine.create_collection("c", SPEC)
        stored = points(1_500)
        await engine.upsert("c", stored)
        before_stats = await engine.stats("c")
        asked = queries(stored)
        before = await answers(engine, asked)
        assert before_stats.indexed_vectors < 2 * len(stored)  # dense vectors sit unoptimized in the appendable segment
        after_stats = await until_maintained(engine, len(stored))
        assert after_stats.points == len(stored)
        assert await answers(engine, asked) == before
        assert [hits[0][1] for hits in before[::3]] == [str(p.id) for p in stored[:: len(stored) // 5]]
    finally:
        await engine.close()
    config = json.loads((tmp_path / "c" / "edge_config.json").read_text())
    assert config["hnsw_config"]["m"] == 0
    assert "scalar" in config["quantization_config"]


async def test_bulk_writes_are_optimized_in_steps(tmp_path: Path) -> None:
    engine = EdgeEngine.open(tmp_path, idle_seconds=3_600, maintain_every=700)  # never idle here
    try:
        await engine.create_collection("c", SPEC)
        await engine.upsert("c", points(2_000))
        stats = await engine.stats("c")
        # Optimized after every 700 points: at most the last few hundred wait in the appendable segment.
        assert stats.points == 2_000
        assert stats.indexed_vectors >= 2 * 2_000 - 700
        assert stats.segments >= 2
    finally:
        await engine.close()


async def test_maintenance_reclaims_deleted_points(tmp_path: Path) -> None:
    engine = EdgeEngine.open(tmp_path, idle_seconds=0.2, maintain_every=100_000)
    try:
        await engine.create_collection("c", SPEC)
        stored = points(2_000)
        await engine.upsert("c", stored)
        await until_maintained(engine, 2_000)
        await engine.delete_where("c", (Range("n", gte=0, lt=1_200),))
        assert (await engine.stats("c")).indexed_vectors == 2 * 2_000  # only marked deleted so far
        stats = await until_maintained(engine, 800)  # idle maintenance rewrote the segment without them
        assert stats.points == await engine.count("c") == 800
        kept = await engine.query_points("c", PointQuery((Nearest("dense", stored[1_500].vectors["dense"]),),
                                                         limit=1))
        assert kept[0].id == "1500"
    finally:
        await engine.close()


async def test_a_shard_from_an_earlier_version_is_tuned_when_opened(tmp_path: Path) -> None:
    old = qe.EdgeShard.create(str(tmp_path / "c"), qe.EdgeConfig(
        vectors={"dense": qe.EdgeVectorParams(DIM, qe.Distance.Cosine)},
        sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}))
    old.update(qe.UpdateOperation.upsert_points([
        qe.Point(p.id, {"dense": list(p.vectors["dense"])}, dict(p.payload))  # type: ignore[arg-type]
        for p in points(1_000)]))
    old.flush()
    old.close()
    engine = EdgeEngine.open(tmp_path)
    try:
        assert await engine.count("c") == 1_000
        stats = await engine.maintain("c")
        assert (stats.points, stats.indexed_vectors) == (1_000, 1_000)  # dense only: these points have no sparse
    finally:
        await engine.close()
    config = json.loads((tmp_path / "c" / "edge_config.json").read_text())
    assert "scalar" in config["quantization_config"]
    # the sparse index is held cold (paged in from its file), which keeps the engine under 400 MiB at 100k chunks
    assert config["sparse_vectors"]["bm25"]["memory"] == "cold"


async def test_a_dead_engine_process_fails_one_call_and_is_replaced(tmp_path: Path) -> None:
    engine = EdgeEngine.open(tmp_path)
    try:
        await engine.create_collection("c", SPEC)
        await engine.upsert("c", points(10))
        pid = engine.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Unavailable):
            await engine.count("c")
        assert await engine.count("c") == 10  # a new process reopened the shard from its WAL
        assert engine.pid not in (None, pid)
        await engine.ping()
    finally:
        await engine.close()


async def test_concurrent_calls_each_get_their_own_answer_also_when_others_are_cancelled(tmp_path: Path) -> None:
    engine = EdgeEngine.open(tmp_path)
    try:
        await engine.create_collection("c", SPEC)
        await engine.upsert("c", points(200))
        # Written back to back, answered in order: a cancelled call's answer must not reach the next caller.
        calls = [asyncio.ensure_future(engine.count("c", (Match("session_id", "s"), Range("n", lt=n))))
                 for n in range(1, 101)]
        for call in calls[::3]:
            call.cancel()
        await asyncio.wait(calls)
        for n, call in enumerate(calls, start=1):
            assert call.cancelled() or call.result() == n
        assert await engine.count("c") == 200
    finally:
        await engine.close()


async def test_the_engine_process_imports_neither_the_messages_nor_the_rpc_stack() -> None:
    """Its memory counts at 100k chunks: the generated messages alone are ~17 MiB of imports it never uses."""
    script = ("import sys, daveloper.vectors.edge_host"
              "; print(sorted({m.split('.')[0] for m in sys.modules} & {'generated', 'betterproto2', 'aiohttp',"
              " 'redis', 'openai', 'numpy', 'qdrant_client'}))")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert out.decode().splitlines()[-1] == "[]"
