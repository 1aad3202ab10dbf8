"""Ingestion through the document pool: throughput end to end, and what the rest of the server sees meanwhile.

* **Throughput**: the generated mixed corpus of ``documents.py`` (Markdown, Python,
  HTML, text, PDF, DOCX; ~20 MB) uploaded through real gRPC ``DocumentService/Upload``
  streams (C at a time, one session) into the app on its embedded defaults (Valkey,
  Qdrant Edge, BM25, the document pool), first byte to the last ``stored`` event.
  Baseline: the same corpus through parse → chunk → embed in this process, one
  document after another, with no transport, event log or storage (the CPU floor
  of the pipeline on one core).
* **Health during a hostile upload**: ``grpc.health.v1.Health/Check`` round trips,
  back to back from another connection, while a 30 MB upload of one line runs.
  With the default budget it is refused (PARSE_BUDGET_EXCEEDED, chunk cap) in
  seconds; the benchmark raises the budget (``--hostile-max-chunks``, CPU 300 s)
  so that its parse, chunk and embed run whole in a worker and its ~19k chunks
  are stored, the worst case the server must stay responsive through. Baselines
  in the same process: the same checks with the server idle, and while the same
  document is parsed, chunked and embedded the way ingestion did before the pool,
  in a thread of the server's process (``asyncio.to_thread``: it holds the GIL).

Peak RSS: the benchmark process (the server and its clients) and the pool's
workers (their high-water marks, read before the app closes).

    .venv/bin/python -m scripts.bench.ingest [--quick] [--megabytes MB] [--concurrency C] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import contextlib
import json
import resource
import tempfile
import time
from typing import Any

import uvloop
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from daveloper.app import App, open_app
from daveloper.documents.chunking import chunk
from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.parsing import parse
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from scripts.bench._app import bench_settings
from scripts.bench._stats import summary_us, table
from scripts.bench.documents import corpus

PIECE = 1 << 20  # bytes per Upload chunk message


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workers_peak_rss_mib(app: App) -> float:
    """The largest high-water mark among the pool's live workers."""
    peaks = [0.0]
    assert app.documents_pool is not None
    for worker in app.documents_pool._all:
        with contextlib.suppress(OSError), open(f"/proc/{worker.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def engine_peak_rss_mib(app: App) -> float:
    """The high-water mark of the Qdrant Edge engine process (0 for a Qdrant server)."""
    pid = getattr(app.qdrant, "pid", None)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if pid is not None and line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one_line(megabytes: int) -> bytes:
    words = b"lorem ipsum dolor sitAmet consectetur adipiscing_elit sed do eiusmod tempor "
    return (words * (megabytes * (1 << 20) // len(words) + 1))[: megabytes << 20]


def messages(name: str, data: bytes) -> list[UploadRequest]:
    return [UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data))),
            *(UploadRequest(chunk=data[i:i + PIECE]) for i in range(0, len(data), PIECE))]


async def upload(stub: DocumentServiceStub, token: str, name: str, data: bytes) -> tuple[str, int]:
    """(outcome, chunks): ``stored`` or the failure's reason."""
    try:
        events = [r.event async for r in stub.upload(messages(name, data), timeout=900,
                                                     metadata={"authorization": f"Bearer {token}"})]
    except GRPCError as error:
        return (error.message or error.status.name), 0
    stored = events[-1].stored
    assert stored is not None, events[-1]
    return "stored", stored.chunk_count


async def health_while(channel: Channel, work: asyncio.Future[Any]) -> list[float]:
    """Health/Check latencies, back to back, until ``work`` is done."""
    health, samples = HealthStub(channel), []
    while not work.done():
        started = time.perf_counter()
        await health.Check(HealthCheckRequest(), timeout=60)
        samples.append(time.perf_counter() - started)
    return samples


async def ingest_corpus(app: App, files: list[tuple[str, bytes]], concurrency: int) -> dict[str, Any]:
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)).token
        stub, pending, chunks = DocumentServiceStub(channel), list(reversed(files)), 0

        async def uploader() -> None:
            nonlocal chunks
            while pending:
                name, data = pending.pop()
                outcome, count = await upload(stub, token, name, data)
                assert outcome == "stored", (name, outcome)
                chunks += count

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(uploader())
        elapsed = time.perf_counter() - started
    finally:
        channel.close()
    size = sum(len(d) for _, d in files)
    return {"seconds": elapsed, "mb_per_s": size / 1e6 / elapsed, "chunks": chunks, "chunks_per_s": chunks / elapsed}


def pipeline_floor(files: list[tuple[str, bytes]]) -> dict[str, Any]:
    embedder, chunks, started = BM25Embedder(), 0, time.perf_counter()
    for name, data in files:
        drafts = chunk(parse(data, file_name=name))
        for draft in drafts:
            embedder.document_vector(draft.text)
        chunks += len(drafts)
    elapsed = time.perf_counter() - started
    size = sum(len(d) for _, d in files)
    return {"seconds": elapsed, "mb_per_s": size / 1e6 / elapsed, "chunks": chunks, "chunks_per_s": chunks / elapsed}


async def health_during_upload(app: App, data: bytes) -> dict[str, Any]:
    uploading = Channel(app.grpc_addr.host, app.grpc_addr.port)
    checking = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        token = (await SessionServiceStub(uploading).create_session(CreateSessionRequest(), timeout=10)).token
        idle_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(2.0, idle_done.set_result, None)
        idle = await health_while(checking, idle_done)

        started = time.perf_counter()
        work = asyncio.ensure_future(upload(DocumentServiceStub(uploading), token, "one-line.txt", data))
        during = await health_while(checking, work)
        outcome, chunks = await work
        upload_seconds = time.perf_counter() - started

        def old_way() -> int:  # what ingestion did before the pool, in a thread of this process
            drafts = chunk(parse(data, file_name="one-line.txt"))
            embedder = BM25Embedder()
            for draft in drafts:
                embedder.document_vector(draft.text)
            return len(drafts)

        started = time.perf_counter()
        thread = asyncio.ensure_future(asyncio.to_thread(old_way))
        in_thread = await health_while(checking, thread)
        thread_chunks = await thread
        thread_seconds = time.perf_counter() - started
    finally:
        uploading.close()
        checking.close()
    return {
        "document_mb": len(data) / 1e6,
        "upload": {"outcome": outcome, "chunks": chunks, "seconds": upload_seconds, "health_us": summary_us(during),
                   "health_max_us": max(during) * 1e6, "checks": len(during)},
        "idle": {"health_us": summary_us(idle), "health_max_us": max(idle) * 1e6, "checks": len(idle)},
        "thread": {"chunks": thread_chunks, "seconds": thread_seconds, "health_us": summary_us(in_thread),
                   "health_max_us": max(in_thread) * 1e6, "checks": len(in_thread)},
    }


async def run(megabytes: float, concurrency: int, hostile_mb: int, max_chunks: int) -> dict[str, Any]:
    files = corpus(megabytes)
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp) / "app", parse_max_chunks=max_chunks, parse_cpu_seconds=300.0)
        async with open_app(settings) as app:
            assert app.documents_pool is not None
            await app.documents_pool.ready()
            ingestion = await ingest_corpus(app, files, concurrency)
            ingestion["peak_rss_mib"] = peak_rss_mib()
            ingestion["worker_peak_rss_mib"] = workers_peak_rss_mib(app)
            ingestion["engine_peak_rss_mib"] = engine_peak_rss_mib(app)
            health = await health_during_upload(app, one_line(hostile_mb))
    floor = pipeline_floor(files)
    return {"corpus": {"files": len(files), "bytes": sum(len(d) for _, d in files)}, "concurrency": concurrency,
            "max_chunks": max_chunks,
            "workers": bench_settings(Path()).parse_workers, "ingestion": ingestion, "pipeline_floor": floor,
            "health": health}


def report(results: dict[str, Any]) -> str:
    c, i, f, h = results["corpus"], results["ingestion"], results["pipeline_floor"], results["health"]
    lines = [f"corpus: {c['files']} files, {c['bytes'] / 1e6:.1f} MB; {results['concurrency']} uploads at a time, "
             f"{results['workers']} pool workers"]
    lines.append(table(["ingestion", "seconds", "MB/s", "chunks", "chunks/s"], [
        ["gRPC Upload → stored (daveloper)", f"{i['seconds']:.1f}", f"{i['mb_per_s']:.2f}", i["chunks"],
         f"{i['chunks_per_s']:.0f}"],
        ["parse → chunk → embed in one process (floor)", f"{f['seconds']:.1f}", f"{f['mb_per_s']:.2f}", f["chunks"],
         f"{f['chunks_per_s']:.0f}"],
        ["ratio daveloper/floor (throughput)", "", f"{i['mb_per_s'] / f['mb_per_s']:.2f}", "", ""],
    ]))
    lines.append(f"peak RSS: server process {i['peak_rss_mib']:.0f} MiB (the benchmark's corpus and clients "
                 f"included), Qdrant Edge engine process {i['engine_peak_rss_mib']:.0f} MiB, largest pool worker "
                 f"{i['worker_peak_rss_mib']:.0f} MiB")
    u, idle, thread = h["upload"], h["idle"], h["thread"]
    lines.append(f"\nHealth/Check during a {h['document_mb']:.0f} MB one-line document "
                 f"(chunk cap {results['max_chunks']}, CPU budget 300 s)")

    def row(label: str, r: dict[str, Any], extra: str) -> list[str]:
        us = r["health_us"]
        return [label, f"{us['p50'] / 1000:.2f}", f"{us['p99'] / 1000:.2f}", f"{r['health_max_us'] / 1000:.1f}",
                r["checks"], extra]

    lines.append(table(["while", "p50 ms", "p99 ms", "max ms", "checks", "document"], [
        row("idle server", idle, "-"),
        row("gRPC Upload, pool (daveloper)", u, f"{u['outcome']} after {u['seconds']:.1f} s"),
        row("same parse+chunk+embed in a server thread (before)", thread,
            f"{thread['chunks']} chunks in {thread['seconds']:.1f} s"),
        ["ratio p99 pool/thread", "", f"{u['health_us']['p99'] / thread['health_us']['p99']:.3f}", "", "", ""],
    ]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=20.0, help="size of the generated corpus")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads in flight")
    parser.add_argument("--hostile-megabytes", type=int, default=30, help="size of the one-line document")
    parser.add_argument("--hostile-max-chunks", type=int, default=30_000,
                        help="the chunk cap during the run (the default cap, 10000, refuses the one-line document)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.hostile_megabytes = 0.25, 1
    results = uvloop.run(run(args.megabytes, args.concurrency, args.hostile_megabytes, args.hostile_max_chunks))
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
