"""DocumentPool: real worker processes parse, chunk and embed; budgets, deaths and fairness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daveloper.documents.chunking import chunk
from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.parsing import Reason, parse
from daveloper.documents.pool import ChunkBatch, DocumentBudget, DocumentPool, FairShare, Outline, Result, Stage
from daveloper.errors import InvalidArgument, ResourceExhausted
from tests.documents import samples

pytestmark = pytest.mark.timeout(60)

#: Enough words to keep a worker busy for seconds (chunking splits them one by one).
SLOW = b"lorem ipsum dolor sit amet " * 400_000


@contextlib.asynccontextmanager
async def open_pool(workers: int = 1, **budget: float) -> AsyncIterator[DocumentPool]:
    async with DocumentPool(workers=workers, budget=DocumentBudget(**budget)) as pool:  # type: ignore[arg-type]
        yield pool


async def results(pool: DocumentPool, data: bytes, *, session: str = "s", name: str = "doc.md") -> list[Result]:
    return [result async for result in pool.process(data, session_id=session, file_name=name)]


async def test_a_document_comes_back_as_the_in_process_pipeline_makes_it() -> None:
    data = samples.markdown_guide().encode()
    async with open_pool() as pool:
        got = await results(pool, data, name="guide.md")
    parsed = parse(data, file_name="guide.md")
    drafts = chunk(parsed)
    embedder = BM25Embedder()
    batches = [r for r in got if isinstance(r, ChunkBatch)]
    assert [d for b in batches for d in b.drafts] == drafts
    assert [v for b in batches for v in b.vectors] == [embedder.document_vector(d.text) for d in drafts]
    assert [r for r in got if isinstance(r, Outline)] == [
        Outline(parsed.media_type, parsed.title, parsed.language, len(drafts))]
    stages = [r.name for r in got if isinstance(r, Stage)]
    assert (stages[0], stages[-1]) == ("parsing", "embedding")
    assert "chunking" in stages
    assert got.index(next(r for r in got if isinstance(r, Outline))) < got.index(batches[0])


async def test_a_refused_document_keeps_its_reason_and_the_worker_serves_on() -> None:
    async with open_pool() as pool:
        worker = next(iter(pool._all))
        with pytest.raises(InvalidArgument) as refused:
            await results(pool, samples.binary_garbage(), name="x.bin")
        assert refused.value.reason == Reason.UNSUPPORTED_MEDIA_TYPE
        assert refused.value.violations
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"# Still here\n\nyes."))
        assert pool._all == {worker}  # a refusal does not cost a worker


async def test_too_many_chunks_fails_the_budget_before_chunking() -> None:
    async with open_pool(max_chunks=3) as pool:
        with pytest.raises(ResourceExhausted) as over:
            await results(pool, samples.markdown_guide().encode() * 20)
        assert over.value.reason == "PARSE_BUDGET_EXCEEDED"
        assert over.value.metadata == {"limit": "chunks", "value": "3"}
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"short and fine"))


async def test_a_worker_is_ready_once_it_ran_the_pipeline_once() -> None:
    """A fresh worker's first document is not charged the lazy imports (numpy among them) and first use."""
    async with open_pool() as pool:
        (worker,) = pool._all
        maps = Path(f"/proc/{worker.pid}/maps").read_text()  # noqa: ASYNC240 (procfs: never blocks)
        assert "_multiarray_umath" in maps  # numpy's core, imported by the embedding of the warm-up


async def test_a_document_over_its_cpu_budget_is_stopped_and_its_worker_replaced() -> None:
    async with open_pool(cpu_seconds=0.3) as pool:
        (first,) = pool._all
        with pytest.raises(ResourceExhausted) as over:
            await results(pool, SLOW, name="slow.txt")
        assert over.value.reason == "PARSE_BUDGET_EXCEEDED"
        assert over.value.metadata["limit"] == "cpu_seconds"
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"the next one is served"))
        assert first not in pool._all


async def test_a_document_over_its_memory_budget_fails_and_the_pool_serves_on() -> None:
    async with open_pool(memory_bytes=300 << 20, cpu_seconds=60) as pool:
        with pytest.raises(ResourceExhausted) as over:
            await results(pool, b"word " * (4 << 20), name="big.txt")
        assert over.value.reason == "PARSE_BUDGET_EXCEEDED"
        assert over.value.metadata["limit"] == "memory_bytes"
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"the next one is served"))


async def test_a_worker_that_dies_fails_only_its_document() -> None:
    async with open_pool(workers=2) as pool:
        dying = pool.process(SLOW, session_id="a", file_name="slow.txt")
        assert isinstance(await anext(dying), Stage)  # the job is running
        (busy,) = (w for w in pool._all if w not in pool._share._free)
        other = asyncio.create_task(results(pool, samples.markdown_guide().encode(), session="b"))
        os.kill(busy.pid, signal.SIGKILL)
        with pytest.raises(ResourceExhausted) as died:
            async for _ in dying:
                pass
        assert died.value.metadata["limit"] == "worker"
        assert any(isinstance(r, ChunkBatch) for r in await other)
        await pool.ready()
        assert len(pool._all) == 2
        assert busy not in pool._all


async def test_leaving_mid_document_stops_its_job() -> None:
    async with open_pool() as pool:
        (first,) = pool._all
        progress = pool.process(SLOW, session_id="s", file_name="slow.txt")
        assert isinstance(await anext(progress), Stage)
        await progress.aclose()
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"served by a fresh worker"))
        assert first not in pool._all


async def test_fair_share_serves_waiting_keys_in_turn() -> None:
    share: FairShare[str] = FairShare()
    share.release("worker")
    assert await share.acquire("a") == "worker"  # free and nobody waiting: at once
    order: list[str] = []

    async def use(key: str, name: str) -> None:
        item = await share.acquire(key)
        order.append(name)
        share.release(item)

    waiters = [asyncio.create_task(use("a", f"a{i}")) for i in range(4)] + [asyncio.create_task(use("b", "b0"))]
    await asyncio.sleep(0)
    assert share.waiting == 5
    share.release("worker")
    await asyncio.gather(*waiters)
    assert order == ["a0", "b0", "a1", "a2", "a3"]


async def test_a_cancelled_waiter_leaves_its_place() -> None:
    share: FairShare[str] = FairShare()
    gone = asyncio.create_task(share.acquire("a"))
    stays = asyncio.create_task(share.acquire("b"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.wait([gone])
    share.release("worker")
    assert await stays == "worker"
    assert share.waiting == 0


async def test_one_sessions_many_documents_do_not_starve_another_sessions_one() -> None:
    doc = samples.markdown_guide().encode()
    finished: list[str] = []
    async with open_pool(workers=1) as pool:
        async def ingest(session: str, name: str) -> None:
            await results(pool, doc, session=session)
            finished.append(name)

        # Every call queues before the first result can arrive (results need the socket).
        tasks = [asyncio.create_task(ingest("many", f"many{i}")) for i in range(6)]
        tasks.append(asyncio.create_task(ingest("one", "one")))
        await asyncio.gather(*tasks)
    assert finished.index("one") == 2  # after the one running and the one it found waiting


async def test_a_worker_that_died_while_idle_costs_no_document() -> None:
    async with open_pool() as pool:
        (idle,) = pool._all
        os.kill(idle.pid, signal.SIGKILL)
        await idle.process.wait()
        assert any(isinstance(r, ChunkBatch) for r in await results(pool, b"served by its replacement"))
        assert idle not in pool._all
