"""Ingestion through the document pool: throughput end to end, and what the rest of the server sees meanwhile.

* **Throughput**: the generated mixed corpus of ``documents.py`` (Markdown, Python,
  HTML, text, PDF, DOCX; ~20 MB) uploaded through real gRPC ``DocumentService/Upload``
  streams (C at a time, one session) into the app on its embedded defaults (Valkey,
  Qdrant Edge, BM25, the document pool), first byte to the last ``stored`` event.
  Baseline: the same corpus through the document worker's own pipeline (parse →
  chunk → embed → the pickled frames) in this process, one document after another,
  with no transport, event log or storage (the CPU floor of the pipeline on one
  core), and that floor's process CPU time per stage.
* **Health during a hostile upload**: ``grpc.health.v1.Health/Check`` round trips,
  back to back from another connection, while a 30 MB upload of one line runs.
  With the default budget it is refused (PARSE_BUDGET_EXCEEDED, chunk cap) in
  seconds; the benchmark raises the budget (``--hostile-max-chunks``, CPU 300 s)
  so that its parse, chunk and embed run whole in a worker and its ~19k chunks
  are stored, the worst case the server must stay responsive through. Baselines
  in the same process: the same checks with the server idle, and while the same
  document is parsed, chunked and embedded the way ingestion did before the pool,
  in a thread of the server's process (``asyncio.to_thread``: it holds the GIL).

The uploads come from a client process of its own (it generates the corpus
itself), so that the figures of the benchmark process are the server's: its CPU
time during the uploads and its peak RSS (read right after them), beside the CPU
time of the client, the pool's workers and the Qdrant Edge engine process, and
their high-water marks (read before the app closes).

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
import math
import os
import pickle
import resource
import tempfile
import threading
import time
from typing import Any

import uvloop
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from daveloper.app import App, open_app
from daveloper.documents.worker import BATCH, Job, cpu_seconds
from daveloper.documents.worker import run as worker_run
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from scripts.bench._app import bench_settings
from scripts.bench._stats import rss_of, summary_us, table

# The pipeline's own modules (the floor) and the corpus's generators (fpdf, python-docx, fontTools, PIL:
# ~40 MiB) are imported where they are used, after the server's RSS was read: the server process's
# figures are a served app's, as `daveloper serve` would have them.

PIECE = 1 << 20  # bytes per Upload chunk message
ROOT = Path(__file__).resolve().parents[2]


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


class TogetherRss:
    """The RSS of the server and the engine process summed, sampled every 20 ms from a thread; its peak.

    Each process's own high-water mark is an upper bound only: the server peaks
    while uploads stream in, the engine while it merges segments (often after
    them), so the sum of the two marks can exceed anything the machine holds.
    """

    def __init__(self, app: App) -> None:
        self._pids = [os.getpid(), getattr(app.qdrant, "pid", None)]
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _rss_mib(self) -> float:
        total = 0
        for pid in self._pids:
            with contextlib.suppress(OSError, RuntimeError, TypeError):  # an engine restarting, or none
                total += rss_of(pid)  # type: ignore[arg-type]
        return total / (1 << 20)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self) -> TogetherRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def engine_settled(app: App, *, quiet: float = 2.0, limit: float = 120.0) -> None:
    """Wait until the engine process used no CPU for ``quiet`` seconds (its maintenance after the uploads ran)."""
    pid = getattr(app.qdrant, "pid", None)
    if pid is None:
        return
    deadline = time.monotonic() + limit
    last, still_since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < quiet:
        await asyncio.sleep(0.25)
        now = cpu_seconds(pid)
        if now != last:
            last, still_since = now, time.monotonic()


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


async def upload_corpus(host: str, port: int, files: list[tuple[str, bytes]], concurrency: int) -> dict[str, Any]:
    """Upload ``files``, ``concurrency`` at a time, into one new session; wall time of the uploads."""
    channel = Channel(host, port)
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

        started, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(uploader())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        channel.close()
    return {"seconds": elapsed, "chunks": chunks, "cpu_seconds": cpu}


async def ingest_corpus(app: App, megabytes: float, concurrency: int) -> dict[str, Any]:
    """The corpus uploaded by a client process of its own, so that the server's CPU time and peak RSS are its own
    (the client generates the corpus, then starts when told, and reports its wall and CPU time)."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.bench.ingest", "--client", app.grpc_addr.host, str(app.grpc_addr.port),
        "--megabytes", str(megabytes), "--concurrency", str(concurrency),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert client.stdin is not None
    assert client.stdout is not None
    corpus_info = json.loads(await client.stdout.readline())  # the corpus is ready
    others = other_cpu_seconds(app)
    cpu = time.process_time()
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    uploaded = json.loads(await client.stdout.readline())
    cpu = time.process_time() - cpu
    others = {name: spent - others.get(name, 0.0) for name, spent in other_cpu_seconds(app).items()}
    assert await client.wait() == 0
    elapsed, chunks = uploaded["seconds"], uploaded["chunks"]
    return {"seconds": elapsed, "mb_per_s": corpus_info["bytes"] / 1e6 / elapsed, "chunks": chunks,
            "chunks_per_s": chunks / elapsed,
            "cpu_seconds": {"server": cpu, "client": uploaded["cpu_seconds"], **others}}


async def client_main(host: str, port: int, megabytes: float, concurrency: int) -> None:
    """``--client``: generate the corpus, say so, wait for ``go``, upload, report."""
    from scripts.bench.documents import corpus

    files = corpus(megabytes)
    print(json.dumps({"files": len(files), "bytes": sum(len(d) for _, d in files)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps(await upload_corpus(host, port, files, concurrency)), flush=True)


def other_cpu_seconds(app: App) -> dict[str, float]:
    """CPU seconds used so far by the pool's live workers (together) and the engine process."""
    assert app.documents_pool is not None
    workers = [cpu_seconds(worker.pid) for worker in app.documents_pool._all]
    engine = cpu_seconds(pid) if (pid := getattr(app.qdrant, "pid", None)) is not None else None
    return {"pool workers": sum(w for w in workers if w is not None), "engine": engine or 0.0}


def pipeline_floor(files: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The worker's ``run`` on each document, its frames pickled as a worker sends them."""
    from daveloper.documents.embeddings.bm25 import BM25Embedder

    embedder, chunks = BM25Embedder(), 0

    def send(*message: Any) -> None:
        nonlocal chunks
        pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if message[0] == "chunks":
            chunks += len(message[1])

    started, cpu = time.perf_counter(), time.process_time()
    for name, data in files:
        worker_run(Job(file_name=name, declared_type="", max_chunks=1 << 30), data, send, embedder)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    size = sum(len(d) for _, d in files)
    return {"seconds": elapsed, "cpu_seconds": cpu, "mb_per_s": size / 1e6 / elapsed, "chunks": chunks,
            "chunks_per_s": chunks / elapsed, "stages": pipeline_stages(files)}


def pipeline_stages(files: list[tuple[str, bytes]]) -> dict[str, float]:
    """Process CPU seconds of each step of the worker's pipeline over ``files`` (a second pass: caches warm)."""
    from daveloper.documents.chunking import MAX_TOKENS, chunk
    from daveloper.documents.embeddings.bm25 import BM25Embedder
    from daveloper.documents.parsing import parse
    from daveloper.documents.tokens import count_tokens

    embedder, clock = BM25Embedder(), time.process_time
    stages = dict.fromkeys(("parse", "count", "chunk", "embed", "frames"), 0.0)
    for name, data in files:
        t0 = clock()
        parsed = parse(data, file_name=name)
        t1 = clock()
        block_tokens = [count_tokens(block.text) for block in parsed.blocks]
        math.ceil(sum(block_tokens) / MAX_TOKENS)
        t2 = clock()
        drafts = chunk(parsed, block_tokens=block_tokens)
        t3 = clock()
        frames = []
        for start in range(0, len(drafts), BATCH):
            batch = drafts[start:start + BATCH]
            frames.append((batch, embedder.document_rows([d.text for d in batch])))
        t4 = clock()
        for batch, vectors in frames:
            pickle.dumps(("chunks", [(d.text, d.token_count, d.heading_path, d.page, d.start_line, d.end_line, i, v)
                                     for d, (i, v) in zip(batch, vectors, strict=True)]),
                         protocol=pickle.HIGHEST_PROTOCOL)
        t5 = clock()
        for stage, spent in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            stages[stage] += spent
    return stages


async def health_during_upload(app: App, data: bytes) -> dict[str, Any]:
    # imported here, not in the thread below: an import holds the GIL, and the server's RSS was read already
    from daveloper.documents.chunking import chunk
    from daveloper.documents.embeddings.bm25 import BM25Embedder
    from daveloper.documents.parsing import parse

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
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp) / "app", parse_max_chunks=max_chunks, parse_cpu_seconds=300.0)
        async with open_app(settings) as app:
            assert app.documents_pool is not None
            await app.documents_pool.ready()
            with TogetherRss(app) as together:
                ingestion = await ingest_corpus(app, megabytes, concurrency)
                ingestion["peak_rss_mib"] = peak_rss_mib()
                await engine_settled(app)
            ingestion["together_peak_rss_mib"] = together.peak_mib
            ingestion["worker_peak_rss_mib"] = workers_peak_rss_mib(app)
            ingestion["engine_peak_rss_mib"] = engine_peak_rss_mib(app)
            health = await health_during_upload(app, one_line(hostile_mb))
    from scripts.bench.documents import corpus

    files = corpus(megabytes)  # after the server's peak RSS was read: the client process uploaded its own copy
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
    lines.append("CPU during the upload, s: " + ", ".join(f"{k} {v:.1f}" for k, v in i["cpu_seconds"].items()))
    stages = f["stages"]
    lines.append(f"floor: {f['cpu_seconds']:.2f} s of process CPU; per stage (a second pass): "
                 + ", ".join(f"{stage} {spent:.2f} s" for stage, spent in stages.items())
                 + f" (sum {sum(stages.values()):.2f} s)")
    lines.append(f"peak RSS: server process {i['peak_rss_mib']:.0f} MiB (the uploading client runs in a process of "
                 f"its own), Qdrant Edge engine process {i['engine_peak_rss_mib']:.0f} MiB, largest pool worker "
                 f"{i['worker_peak_rss_mib']:.0f} MiB; server and engine together, sampled every 20 ms through "
                 f"the uploads and the engine's maintenance after them, {i['together_peak_rss_mib']:.0f} MiB "
                 f"({i['together_peak_rss_mib'] * 1.048576:.0f} MB)")
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
    parser.add_argument("--client", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        uvloop.run(client_main(args.client[0], int(args.client[1]), args.megabytes, args.concurrency))
        return
    if args.quick:
        args.megabytes, args.hostile_megabytes = 0.25, 1
    results = uvloop.run(run(args.megabytes, args.concurrency, args.hostile_megabytes, args.hostile_max_chunks))
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
