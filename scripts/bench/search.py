"""`DocumentService/Search` end to end over gRPC on the embedded default (Qdrant Edge), next to its floor.

For each size (10k and 100k chunks; ``--quick``: 2k) the app runs on a fresh
data dir with its defaults (Qdrant Edge, BM25), sharing one Valkey with a
second app started later on the same data dir. Chunks are written straight
through a ``ChunkStore`` on the app's engine (synthetic Zipf-vocabulary
paragraphs, 5k distinct ones reused, with the project's BM25 vectors and
random 384-d dense vectors), all in the searched session, plus a tenth as many
in another session. Then, in the same process:

* **sparse** searches over gRPC on the default app, one at a time, each
  followed by the same query sent straight to the vector engine (same session
  filter, same per-session IDF corpus): the floor under gRPC, the servicer,
  query embedding and the hit conversion;
* **hybrid** (sparse + dense, RRF) the same way, on a second app over the same
  data dir with the ``openai`` embedder pointed at a local stand-in endpoint
  (deterministic random 384-d vectors): its figure includes the query's dense
  embedding round trip;
* at sizes ≤ 10k, **before**: the same chunks in qdrant-client's local mode (what
  earlier versions used), searched through ``ChunkStore`` directly;
* **loop responsiveness**: an asyncio ticker (5 ms sleeps; max lag) and
  ``grpc.health.v1.Health/Check`` every 20 ms, first on an idle server, then
  while 4 clients search back to back, then while one large upsert (20k
  chunks, vectors computed beforehand; quick: 2k) runs, then while those chunks
  are deleted and the collection is optimized (Edge's maintenance step,
  which reclaims them), on the default app. The load average at the end of
  each size is printed: the machine may be shared.

Run::

    .venv/bin/python scripts/bench/search.py [--quick] [--sizes 10000,100000] [--queries N] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from aiohttp import web
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from daveloper.app import App, open_app
from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.model import ChunkDraft, SearchMode, Vectors
from daveloper.documents.store import ChunkStore
from daveloper.infra.qdrant import EDGE_DIR
from daveloper.infra.valkey import EmbeddedValkey
from daveloper.vectors import Match, Nearest, PointQuery, Sparse
from daveloper.vectors.edge import EdgeEngine
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    GetSessionRequest,
    SearchRequest,
    SessionServiceStub,
)
from generated.daveloper.v1 import SearchMode as ProtoSearchMode
from scripts.bench._app import bench_settings
from scripts.bench._stats import percentile, table
from scripts.bench.documents import Words

DIM = 384
TOP_K = 8
LOAD_BATCH = 1000


def random_vector(rng: random.Random) -> tuple[float, ...]:
    return tuple(rng.gauss(0.0, 1.0) for _ in range(DIM))


def text_vector(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return list(random_vector(random.Random(seed)))


@contextlib.asynccontextmanager
async def embedding_endpoint() -> AsyncIterator[str]:
    """A stand-in OpenAI-compatible ``/v1/embeddings``: one deterministic random vector per input."""

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": text_vector(str(t))} for i, t in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": body.get("model", "bench"),
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


class Corpus:
    """Synthetic chunks: ``distinct`` paragraphs and their BM25 vectors, reused cyclically (loading stays quick)."""

    def __init__(self, seed: int, distinct: int) -> None:
        self.words = Words(random.Random(seed))
        self.texts = [self.words.paragraph() for _ in range(distinct)]
        self.rng = random.Random(seed + 1)
        self.sparse: list[Vectors] = []

    async def prepare(self) -> None:
        self.sparse = await BM25Embedder().embed_documents(self.texts)

    def chunks(self, start: int, stop: int) -> tuple[list[ChunkDraft], list[Vectors]]:
        drafts = [ChunkDraft(index=i - start, text=self.texts[i % len(self.texts)], token_count=100)
                  for i in range(start, stop)]
        vectors = [Vectors(sparse=self.sparse[i % len(self.texts)].sparse, dense=random_vector(self.rng))
                   for i in range(start, stop)]
        return drafts, vectors


async def load(store: ChunkStore, session: str, size: int, corpus: Corpus) -> float:
    """Write ``size`` chunks of one session through ``store``, in documents of 1,000; returns seconds."""
    started = time.perf_counter()
    for start in range(0, size, LOAD_BATCH):
        drafts, vectors = corpus.chunks(start, min(size, start + LOAD_BATCH))
        await store.upsert(session, f"doc{start // LOAD_BATCH}", "bench", drafts, vectors, document_name="bench")
    return time.perf_counter() - started


def memory_mib(pid: int | None, field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of a process, in MiB (0 when it is gone)."""
    with contextlib.suppress(OSError, TypeError), open(f"/proc/{pid if pid is not None else 'self'}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def ms(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(samples, q) * 1e3, 3) for q in (50, 90, 99)} | {
        "max": round(max(samples) * 1e3, 3)}


async def latency_pair(queries: list[str], grpc_call: Callable[[str], Awaitable[Any]],
                       floor_call: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
    ours, floor = [], []
    for query in queries:
        t0 = time.perf_counter()
        await grpc_call(query)
        t1 = time.perf_counter()
        await floor_call(query)
        ours.append(t1 - t0)
        floor.append(time.perf_counter() - t1)
    return {"grpc": ms(ours), "engine": ms(floor), "ratio_p50": round(percentile(ours, 50) / percentile(floor, 50), 1)}


async def responsiveness(channel: Channel, seconds: float, work: Callable[[], Awaitable[Any]] | None
                         ) -> dict[str, Any]:
    """Health/Check latencies and the loop's max lag while ``work`` runs (or for ``seconds`` idle)."""
    health, lags, done = [], [], asyncio.Event()
    stub = HealthStub(channel)

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)

    async def checker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await stub.Check(HealthCheckRequest(service=""), timeout=30)
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(ticker()), group.create_task(checker())]
        try:
            if work is None:
                await asyncio.sleep(seconds)
            else:
                await work()
        finally:
            done.set()
        await asyncio.gather(*tasks)
    return {"seconds": round(time.perf_counter() - started, 2), "health_checks": len(health),
            "health_ms": ms(health), "loop_max_lag_ms": round(max(lags) * 1e3, 2)}


async def before_local_mode(tmp: Path, size: int, queries: list[str], corpus: Corpus) -> dict[str, Any]:
    """The same chunks in qdrant-client local mode (earlier versions' store), searched through ChunkStore."""
    from qdrant_client import AsyncQdrantClient

    from daveloper.vectors.remote import RemoteEngine

    engine = RemoteEngine(AsyncQdrantClient(path=str(tmp / "local-mode")))
    try:
        store = ChunkStore(engine, dense_size=DIM)
        seconds = await load(store, "bench-session", size, corpus)
        embedder, samples = BM25Embedder(), []
        for query in queries:
            vectors = await embedder.embed_query(query)
            t0 = time.perf_counter()
            await store.search("bench-session", vectors, top_k=TOP_K, mode=SearchMode.SPARSE)
            samples.append(time.perf_counter() - t0)
        return {"load_seconds": round(seconds, 1), "store_search": ms(samples)}
    finally:
        await engine.close()


def searcher(channel: Channel, auth: dict[str, str], mode: ProtoSearchMode) -> Callable[[str], Awaitable[Any]]:
    documents = DocumentServiceStub(channel)

    async def call(query: str) -> Any:
        response = await documents.search(SearchRequest(query=query, top_k=TOP_K, mode=mode), timeout=30,
                                          metadata=auth)
        assert response.hits, query
    return call


def engine_floor(app: App, session: str, hybrid: bool) -> Callable[[str], Awaitable[Any]]:
    """The same query straight to the vector engine: same filter, same IDF corpus, same depth."""
    embedder, rng, tenant = BM25Embedder(), random.Random(5), (Match("session_id", session),)

    async def call(query: str) -> Any:
        vectors = await embedder.embed_query(query)
        assert vectors.sparse is not None
        stages = (Nearest("bm25", Sparse(vectors.sparse.indices, vectors.sparse.values), idf_corpus=tenant),)
        if hybrid:
            stages += (Nearest("dense", random_vector(rng)),)
        await app.qdrant.query_points(app.chunk_store.collection, PointQuery(
            stages, limit=TOP_K, where=tenant, depth=min(max(TOP_K * 4, 20), 200)))
    return call


async def default_app(app: App, size: int, texts: list[str], corpus: Corpus, quick: bool, tmp: Path
                      ) -> tuple[dict[str, Any], str]:
    """Load, then sparse search, before, and responsiveness on the default app; returns results and a token."""
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)
        assert created.session is not None
        session, auth = created.session.id, {"authorization": f"Bearer {created.token}"}
        store = ChunkStore(app.qdrant, dense_size=DIM, collection=app.chunk_store.collection)
        result: dict[str, Any] = {"load_seconds": round(await load(store, session, size, corpus), 1)}
        await load(store, "other-session", size // 10, corpus)
        search = searcher(channel, auth, ProtoSearchMode.SPARSE)
        await search(texts[0])  # warm up: collection, connections
        result["sparse"] = await latency_pair(texts, search, engine_floor(app, session, hybrid=False))
        if size <= 10_000:
            result["before"] = await before_local_mode(tmp, size, texts[:10 if quick else 20], corpus)

        seconds = 2.0 if quick else 8.0
        result["idle"] = await responsiveness(channel, seconds, None)

        async def searches() -> None:
            deadline = time.monotonic() + seconds

            async def client(i: int) -> None:
                while time.monotonic() < deadline:
                    await search(texts[i % len(texts)])
                    i += 4
            async with asyncio.TaskGroup() as group:
                for i in range(4):
                    group.create_task(client(i))
        result["during_searches"] = await responsiveness(channel, seconds, searches)

        bulk = 2_000 if quick else 20_000
        drafts, vectors = corpus.chunks(0, bulk)
        gc.freeze()

        async def upsert() -> None:
            started = time.perf_counter()
            await store.upsert("bulk-session", "bulk", "bench", drafts, vectors)
            result["bulk_upsert_seconds"] = round(time.perf_counter() - started, 2)
        result["during_upsert"] = await responsiveness(channel, seconds, upsert)
        result["bulk_chunks"] = bulk

        async def reclaim() -> None:
            # Delete the bulk session's chunks and optimize now: the largest maintenance step a data dir sees
            # short of a first start on an unoptimized one (Edge rewrites the segments holding the deleted points).
            await store.delete_session("bulk-session")
            if isinstance(app.qdrant, EdgeEngine):
                started = time.perf_counter()
                stats = await app.qdrant.maintain(store.collection)
                result["maintenance"] = {"seconds": round(time.perf_counter() - started, 2),
                                         "segments": stats.segments, "points": stats.points}
        result["during_maintenance"] = await responsiveness(channel, seconds, reclaim)
        # Memory with every chunk loaded and searched: the engine process holds the shards; this process is
        # the server plus the benchmark's own corpus, vectors and clients.
        engine_pid = app.qdrant.pid if isinstance(app.qdrant, EdgeEngine) else None
        result["memory_mib"] = {"engine_peak": round(memory_mib(engine_pid, "VmHWM")),
                                "engine_now": round(memory_mib(engine_pid, "VmRSS")),
                                "process_peak": round(memory_mib(None, "VmHWM"))}
        return result, created.token
    finally:
        channel.close()


async def hybrid_app(app: App, token: str, texts: list[str]) -> dict[str, Any]:
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        auth = {"authorization": f"Bearer {token}"}
        session = (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=10, metadata=auth))
        assert session.session is not None
        search = searcher(channel, auth, ProtoSearchMode.HYBRID)
        await search(texts[0])
        return await latency_pair(texts, search, engine_floor(app, session.session.id, hybrid=True))
    finally:
        channel.close()


async def run(sizes: list[int], queries: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    words = Words(random.Random(99))
    texts = [" ".join(words.rng.choices(words.words[:2000], k=3)) for _ in range(queries)]
    corpus = Corpus(seed=1, distinct=1_000 if quick else 5_000)
    await corpus.prepare()
    # The benchmark's own data (corpus, precomputed vectors) shares the server's process: keep it out of
    # the collector's full passes, which otherwise stall the loop 130-260 ms each (measured with gc.callbacks).
    gc.freeze()
    with tempfile.TemporaryDirectory() as valkey_dir:
        async with embedding_endpoint() as url, EmbeddedValkey(Path(valkey_dir)) as valkey:
            for size in sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    settings = bench_settings(Path(tmp) / "data", redis_url=valkey.url)
                    # The chunk collection gets dense vectors too, before the default (sparse) app opens it.
                    engine = EdgeEngine.open(settings.data_dir / EDGE_DIR)
                    try:
                        await ChunkStore(engine, dense_size=DIM).ensure_collection()
                    finally:
                        await engine.close()
                    async with open_app(settings) as app:
                        result, token = await default_app(app, size, texts, corpus, quick, Path(tmp))
                    hybrid = settings.replace(embedder="openai", embedding_base_url=url, embedding_api_key="bench",
                                              embedding_size=DIM)
                    async with open_app(hybrid) as app:
                        result["hybrid"] = await hybrid_app(app, token, texts)
                    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
                    results[str(size)] = result
    return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for size, r in results.items():
        for mode in ("sparse", "hybrid"):
            g, e = r[mode]["grpc"], r[mode]["engine"]
            rows.append([size, mode, g["p50"], g["p90"], g["p99"], e["p50"], e["p99"], r[mode]["ratio_p50"]])
        if "before" in r:
            b = r["before"]["store_search"]
            rows.append([size, "sparse, before (local mode, store only)", b["p50"], b["p90"], b["p99"], "", "",
                         round(b["p50"] / r["sparse"]["grpc"]["p50"], 1)])
    out = [table(["chunks", "search", "gRPC p50 ms", "p90", "p99", "engine p50", "engine p99",
                  "gRPC ÷ engine (before: before ÷ gRPC)"], rows), ""]
    rows = []
    for size, r in results.items():
        for phase in ("idle", "during_searches", "during_upsert", "during_maintenance"):
            p = r[phase]
            rows.append([size, phase, p["health_checks"], p["health_ms"]["p50"], p["health_ms"]["p99"],
                         p["health_ms"]["max"], p["loop_max_lag_ms"]])
    out.append(table(["chunks", "phase", "Health/Check calls", "p50 ms", "p99 ms", "max ms", "loop max lag ms"],
                     rows))
    out.append("")
    out.append("; ".join(f"{s}: load {r['load_seconds']} s, bulk upsert of {r['bulk_chunks']} chunks "
                         f"{r['bulk_upsert_seconds']} s, maintenance after deleting them {r.get('maintenance')}, "
                         f"memory MiB {r['memory_mib']}, load average {r['load_average']}"
                         for s, r in results.items()))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run at 2k chunks")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=300, help="searches per mode and size")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    sizes = [2_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    queries = 50 if args.quick else args.queries
    results = uvloop.run(run(sizes, queries, args.quick))
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
