"""The cost of seeing one version of each document: ``DocumentSearch`` with the catalog's version check
beside the same search without it, in one process, on one store.

The version check reads the session's hidden set (overlapping the query's
embedding), adds a ``MatchExcept`` on ``ingestion_id`` when versions are in
flight, and reads the set's epoch again after the query. Measured with no
version in flight (hidden set empty) and with one (a non-empty filter), on N
synthetic chunks in Qdrant Edge and an embedded Valkey; queries alternate
between the two searches so load on the machine hits both alike.

    .venv/bin/python -m scripts.bench.versions [--quick] [--chunks N] [--queries Q] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import json
import random
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis
import uvloop

from daveloper.config import Settings
from daveloper.documents.catalog import Catalog
from daveloper.documents.embeddings import BM25Embedder
from daveloper.documents.model import ChunkDraft, SearchMode
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.infra.qdrant import open_qdrant
from daveloper.infra.valkey import EmbeddedValkey
from scripts.bench._stats import summary_us, table


async def run(chunks: int, queries: int) -> dict[str, Any]:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(5000)]
    embedder = BM25Embedder()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedValkey(Path(tmp) / "valkey") as server:
            redis = aioredis.Redis.from_url(server.url)
            settings = Settings(data_dir=Path(tmp), log_level="WARNING", instance_id="bench")
            try:
                async with open_qdrant(settings) as qdrant:
                    store = ChunkStore(qdrant, collection="bench_versions")
                    for start in range(0, chunks, 1000):
                        drafts = [ChunkDraft(index=i, text=" ".join(rng.choices(words, k=60)), token_count=60)
                                  for i in range(start, min(chunks, start + 1000))]
                        await store.upsert("s", f"doc{start}", f"ing{start}", drafts,
                                           await embedder.embed_documents([d.text for d in drafts]))
                    catalog = Catalog(redis, prefix="bench:")
                    plain = DocumentSearch(store, embedder)
                    versioned = DocumentSearch(store, embedder, catalog=catalog)
                    for case in ("no version in flight", "one version in flight"):
                        if case == "one version in flight":
                            await catalog.stage("s", "doc_new", "ing_new")
                        texts = [" ".join(rng.choices(words[:2000], k=3)) for _ in range(queries)]
                        bare, checked = [], []
                        for query in texts:
                            t0 = time.perf_counter()
                            await plain.search("s", query, top_k=8, mode=SearchMode.SPARSE)
                            t1 = time.perf_counter()
                            await versioned.search("s", query, top_k=8, mode=SearchMode.SPARSE)
                            t2 = time.perf_counter()
                            bare.append(t1 - t0)
                            checked.append(t2 - t1)
                        results[case] = {"without": summary_us(bare), "with": summary_us(checked)}
            finally:
                await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.queries = 1000, 20
    results = uvloop.run(run(args.chunks, args.queries))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.chunks} chunks, {args.queries} sparse queries each")
    print(table(["case", "without check p50 / p99 µs", "with version check p50 / p99 µs", "p50 ratio"], [
        [case, f"{r['without']['p50']:.0f} / {r['without']['p99']:.0f}",
         f"{r['with']['p50']:.0f} / {r['with']['p99']:.0f}", f"{r['with']['p50'] / r['without']['p50']:.2f}"]
        for case, r in results.items()]))


if __name__ == "__main__":
    main()
