"""Document ingestion throughput and search latency, each beside a baseline in the same run.

* **Ingestion**: a generated mixed corpus (Markdown, Python, HTML, plain text, PDF,
  DOCX; ~20 MB by default) uploaded file by file through the real path — a gRPC
  ``DocumentService/Upload`` stream into the app on its embedded defaults (Valkey,
  Qdrant local mode, BM25) — from first byte to the ``stored`` event. Baseline: the
  same corpus through parse → chunk → embed in process, with no transport, event
  log or storage, i.e. the CPU floor of the pipeline.
* **Search**: a collection of N synthetic chunks (10k and 100k by default), then
  queries through ``DocumentSearch`` (BM25 query embedding, session filter,
  session-scoped IDF) beside the baseline of a bare ``query_points`` with the same
  sparse vector and no filter.

    .venv/bin/python -m scripts.bench.documents [--quick] [--megabytes MB] [--sizes 10000,100000] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import io
import json
import random
import resource
import tempfile
import time
from typing import Any

import docx
import uvloop
from fpdf import FPDF
from grpclib.client import Channel

from daveloper.app import open_app
from daveloper.config import Settings
from daveloper.documents.chunking import chunk
from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.model import ChunkDraft, SearchMode
from daveloper.documents.parsing import parse
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.vectors import Nearest, PointQuery, Sparse
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from scripts.bench._app import bench_settings
from scripts.bench._stats import summary_us, table

PIECE = 256 * 1024  # bytes per Upload chunk message


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Words:
    """A Zipf-like vocabulary, so term statistics resemble real text."""

    def __init__(self, rng: random.Random, size: int = 5000) -> None:
        self.rng = rng
        self.words = [self._word(i) for i in range(size)]
        self.weights = [1 / (rank + 1) for rank in range(size)]

    def _word(self, i: int) -> str:
        consonants, vowels = "bcdfghklmnprstvz", "aeiou"
        out = ""
        while True:
            out += consonants[i % 16] + vowels[(i // 16) % 5]
            i //= 80
            if not i:
                return out + "x"

    def sentence(self, n: int = 12) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=n)).capitalize() + "."

    def paragraph(self) -> str:
        return " ".join(self.sentence(self.rng.randint(8, 20)) for _ in range(self.rng.randint(3, 7)))


def markdown(w: Words) -> bytes:
    parts = [f"# {w.sentence(4)}"]
    for s in range(w.rng.randint(4, 10)):
        parts.append(f"## Section {s}: {w.sentence(3)}")
        parts += [w.paragraph() for _ in range(w.rng.randint(2, 6))]
        if w.rng.random() < 0.3:
            parts.append("```python\n" + "\n".join(f"x_{i} = compute_{i}(y)" for i in range(6)) + "\n```")
    return "\n\n".join(parts).encode()


def python_source(w: Words) -> bytes:
    out = ['"""' + w.sentence(8) + '"""\n']
    for f in range(w.rng.randint(10, 30)):
        name = "_".join(w.rng.choices(w.words[:300], k=2))
        body = "\n".join(f"    {v} = {v}_{i} + {i}" for i, v in enumerate(w.rng.choices(w.words[:200], k=8)))
        out.append(f"\ndef {name}_{f}(value):\n    \"\"\"{w.sentence(10)}\"\"\"\n{body}\n    return value\n")
    return "\n".join(out).encode()


def html(w: Words) -> bytes:
    body = "".join(f"<h2>{w.sentence(3)}</h2><p>{w.paragraph()}</p><p>{w.paragraph()}</p>" for _ in range(6))
    return (f"<!doctype html><html><head><title>{w.sentence(4)}</title></head><body>"
            f"<nav>Home | Docs | Blog</nav><article><h1>{w.sentence(4)}</h1>{body}</article>"
            f"<footer>Copyright</footer></body></html>").encode()


def text(w: Words) -> bytes:
    return "\n\n".join(w.paragraph() for _ in range(20)).encode()


def pdf(w: Words) -> bytes:
    document = FPDF()
    document.set_font("helvetica", size=11)
    for _ in range(5):
        document.add_page()
        document.multi_cell(0, 5, "\n\n".join(w.paragraph() for _ in range(5)))
    return bytes(document.output())


def docx_file(w: Words) -> bytes:
    document = docx.Document()
    for s in range(6):
        document.add_heading(w.sentence(3), level=1 + s % 2)
        for _ in range(3):
            document.add_paragraph(w.paragraph())
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


MIX = [("md", markdown, 0.35), ("py", python_source, 0.25), ("html", html, 0.15), ("txt", text, 0.15),
       ("pdf", pdf, 0.05), ("docx", docx_file, 0.05)]


def corpus(megabytes: float, seed: int = 7) -> list[tuple[str, bytes]]:
    w = Words(random.Random(seed))
    files: list[tuple[str, bytes]] = []
    for ext, make, share in MIX:
        budget, made = megabytes * share * 1e6, 0
        while made < budget:
            data = make(w)
            files.append((f"f{len(files)}.{ext}", data))
            made += len(data)
    return files


async def ingest(files: list[tuple[str, bytes]], data_dir: Path) -> dict[str, Any]:
    settings = bench_settings(data_dir)
    async with open_app(settings) as app:
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)).token
            stub, chunks, started = DocumentServiceStub(channel), 0, time.perf_counter()
            for name, data in files:
                messages = [UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data)))]
                messages += [UploadRequest(chunk=data[i:i + PIECE]) for i in range(0, len(data), PIECE)]
                events = [r.event async for r in stub.upload(messages, timeout=600,
                                                             metadata={"authorization": f"Bearer {token}"})]
                assert events[-1].stored is not None, events[-1]
                chunks += events[-1].stored.chunk_count
            elapsed = time.perf_counter() - started
        finally:
            channel.close()
    size = sum(len(d) for _, d in files)
    return {"seconds": elapsed, "mb_per_s": size / 1e6 / elapsed, "chunks": chunks, "chunks_per_s": chunks / elapsed,
            "peak_rss_mib": peak_rss_mib()}


async def pipeline_floor(files: list[tuple[str, bytes]]) -> dict[str, Any]:
    embedder, chunks, started = BM25Embedder(), 0, time.perf_counter()
    for name, data in files:
        drafts = chunk(parse(data, file_name=name))
        await embedder.embed_documents([d.text for d in drafts])
        chunks += len(drafts)
    elapsed = time.perf_counter() - started
    size = sum(len(d) for _, d in files)
    return {"seconds": elapsed, "mb_per_s": size / 1e6 / elapsed, "chunks": chunks, "chunks_per_s": chunks / elapsed}


async def search_latency(sizes: list[int], queries: int, data_dir: Path) -> dict[str, Any]:
    w = Words(random.Random(11))
    embedder = BM25Embedder()
    results: dict[str, Any] = {}
    settings = Settings(data_dir=data_dir, log_level="WARNING", instance_id="bench")
    from daveloper.infra.qdrant import open_qdrant

    async with open_qdrant(settings) as qdrant:
        for size in sizes:
            store = ChunkStore(qdrant, collection=f"bench_{size}")
            search = DocumentSearch(store, embedder)
            started = time.perf_counter()
            for start in range(0, size, 1000):
                batch = range(start, min(size, start + 1000))
                drafts = [ChunkDraft(index=i, text=w.paragraph(), token_count=100) for i in batch]
                vectors = await embedder.embed_documents([d.text for d in drafts])
                await store.upsert("session-a", f"doc{start // 1000}", "ing", drafts, vectors,
                                   document_name="bench", source_uri="", metadata={})
            load = time.perf_counter() - started
            texts = [" ".join(w.rng.choices(w.words[:2000], k=3)) for _ in range(queries)]
            ours, bare = [], []
            for query in texts:
                t0 = time.perf_counter()
                await search.search("session-a", query, top_k=8, mode=SearchMode.SPARSE)
                t1 = time.perf_counter()
                sparse = (await embedder.embed_query(query)).sparse
                assert sparse is not None
                await qdrant.query_points(f"bench_{size}", PointQuery(
                    (Nearest("bm25", Sparse(sparse.indices, sparse.values)),), limit=8))
                t2 = time.perf_counter()
                ours.append(t1 - t0)
                bare.append(t2 - t1)
            results[str(size)] = {"load_seconds": load, "daveloper": summary_us(ours), "bare": summary_us(bare),
                                  "peak_rss_mib": peak_rss_mib()}
    return results


async def run(megabytes: float, sizes: list[int], queries: int) -> dict[str, Any]:
    files = corpus(megabytes)
    with tempfile.TemporaryDirectory() as tmp:
        ingestion = await ingest(files, Path(tmp) / "ingest")
        floor = await pipeline_floor(files)
        search = await search_latency(sizes, queries, Path(tmp) / "search")
    kinds = {ext: sum(1 for n, _ in files if n.endswith("." + ext)) for ext, _, _ in MIX}
    return {"corpus": {"files": len(files), "bytes": sum(len(d) for _, d in files), "by_kind": kinds},
            "ingestion": ingestion, "pipeline_floor": floor, "search": search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=20.0, help="size of the generated corpus")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts for the search benchmark")
    parser.add_argument("--queries", type=int, default=100, help="queries per collection size")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.sizes, args.queries = 0.3, "500", 10
    results = uvloop.run(run(args.megabytes, [int(s) for s in args.sizes.split(",")], args.queries))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    c, i, f = results["corpus"], results["ingestion"], results["pipeline_floor"]
    print(f"corpus: {c['files']} files, {c['bytes'] / 1e6:.1f} MB ({c['by_kind']})")
    print(table(["ingestion", "seconds", "MB/s", "chunks", "chunks/s"], [
        ["gRPC Upload → stored (daveloper)", f"{i['seconds']:.1f}", f"{i['mb_per_s']:.2f}", i["chunks"],
         f"{i['chunks_per_s']:.0f}"],
        ["parse → chunk → embed in process (floor)", f"{f['seconds']:.1f}", f"{f['mb_per_s']:.2f}", f["chunks"],
         f"{f['chunks_per_s']:.0f}"],
        ["ratio daveloper/floor (throughput)", "", f"{i['mb_per_s'] / f['mb_per_s']:.2f}", "", ""],
    ]))
    print(f"peak RSS after ingestion: {i['peak_rss_mib']:.0f} MiB")
    rows = []
    for size, r in results["search"].items():
        rows.append([size, f"{r['load_seconds']:.0f}", f"{r['daveloper']['p50']:.0f} / {r['daveloper']['p99']:.0f}",
                     f"{r['bare']['p50']:.0f} / {r['bare']['p99']:.0f}",
                     f"{r['daveloper']['p50'] / r['bare']['p50']:.2f}", f"{r['peak_rss_mib']:.0f}"])
    print(table(["chunks", "load s", "DocumentSearch p50 / p99 µs", "bare query_points p50 / p99 µs",
                 "p50 ratio", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
