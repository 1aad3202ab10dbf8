"""Ingestion: bytes in, a stored and searchable document out, every step on the event log.

An ingestion is a durable job. Its events (started, progress per stage, then
exactly one final ``stored`` or ``failed``) are appended to the event log
scope ``ingest:<id>``, so any instance can replay and tail them; once the bytes
have arrived, the work runs in the background and survives its client leaving.
A cancel (from any instance, through the event log's control channel) or a
failure removes whatever points the ingestion wrote: no partial document is
ever left behind.

Parsing, chunking and sparse embedding run in the
:class:`~daveloper.documents.pool.DocumentPool`'s worker processes, within its
per-document budget; the event loop only receives the chunks, adds dense
vectors when the embedder is hybrid, and stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from daveloper.agent.retry import retry_unavailable
from daveloper.documents.catalog import Catalog
from daveloper.documents.model import ChunkDraft, Embedder, Vectors
from daveloper.documents.pool import ChunkBatch, DocumentPool, Outline, Stage
from daveloper.documents.store import ChunkStore
from daveloper.documents.versions import commit_version, discard_version, document_id_of
from daveloper.errors import DaveloperError, FailedPrecondition, Unavailable, to_failure, translated
from daveloper.eventlog import EventLog
from daveloper.jobs import BackgroundJobs
from daveloper.metrics import Metrics
from daveloper.ownership import WorkLeases
from daveloper.rpc.encoded import varint
from generated.daveloper.v1 import (
    Document,
    Failure,
    IngestEvent,
    IngestStage,
    IngestStarted,
)

__all__ = ["Ingestion", "Ingestor", "ingestion_scope"]

log = logging.getLogger("daveloper.documents")

#: A RECEIVING progress event at most every this many bytes.
RECEIVE_PROGRESS_BYTES = 1 << 20
#: Progress events wait at most this long to be appended together with the ones after them.
PROGRESS_SECONDS = 0.1
#: How long an ingestion's end is retried while Redis does not answer, before the reaper is left to record it.
END_RETRY_SECONDS = 15.0
#: Larger documents are hashed in a thread.
HASH_IN_THREAD_BYTES = 1 << 20

#: The pool's stage names as the event log reports them.
_STAGES = {"parsing": IngestStage.PARSING, "chunking": IngestStage.CHUNKING, "embedding": IngestStage.EMBEDDING}


def ingestion_scope(ingestion_id: str) -> str:
    return f"ingest:{ingestion_id}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _field(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


def _varint_fields(*fields: tuple[int, int]) -> bytes:
    # proto3: a zero is not written
    return b"".join(varint(number << 3) + varint(value) for number, value in fields if value)


def progress_event(ingestion_id: str, time_ns: int, stage: IngestStage, done: int, total: int) -> bytes:
    """``bytes(IngestEvent(ingestion_id, create_time, progress=IngestProgress(stage, done, total)))``, written directly.

    A document reports five or more of these; betterproto2 takes ~60 µs to encode each, this ~3 µs
    (the bytes are the same: tests/documents/test_ingest.py).
    """
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return (_field(2, ingestion_id.encode()) + _field(3, _varint_fields((1, seconds), (2, nanos)))
            + _field(11, _varint_fields((1, int(stage)), (2, done), (3, total))))


@dataclass
class Ingestion:
    """One upload being ingested: who asked, what it is called, what has arrived."""

    id: str
    session_id: str
    file_name: str
    media_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    client_document_id: str = ""
    source_uri: str = ""
    data: bytearray = field(default_factory=bytearray)
    _reported: int = 0
    #: Progress events not yet appended, and when the last batch was (see ``PROGRESS_SECONDS``).
    _pending: list[bytes] = field(default_factory=list)
    _flushed: float = 0.0

    @property
    def scope(self) -> str:
        return ingestion_scope(self.id)


class Ingestor:
    """Runs ingestions; shared by every upload of the process."""

    def __init__(
        self,
        *,
        events: EventLog,
        catalog: Catalog,
        store: ChunkStore,
        pool: DocumentPool,
        jobs: BackgroundJobs,
        dense: Embedder | None = None,
        work: WorkLeases | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._events = events
        metrics = metrics if metrics is not None else Metrics()
        self._stored, self._failed, self._cancelled = (metrics.ingestions.labels(outcome)
                                                       for outcome in ("stored", "failed", "cancelled"))
        self._bytes, self._seconds = metrics.ingested_bytes, metrics.ingest_seconds
        #: Leases on ingestions in progress, so another instance fails them if this one dies.
        self._work = work
        self._catalog = catalog
        self._store = store
        self._pool = pool
        #: The dense half of a hybrid embedder (the pool computes the sparse half), else None.
        self._dense = dense
        self._jobs = jobs

    # -- the event log -----------------------------------------------------------------

    async def _emit(self, ingestion: Ingestion, *, final: bool = False, **kind: Any) -> None:
        event = IngestEvent(ingestion_id=ingestion.id, create_time=_now(), **kind)
        batch, ingestion._pending = [*ingestion._pending, bytes(event)], []
        await self._events.append_many(ingestion.scope, batch, final=final)
        ingestion._flushed = time.monotonic()
        if final and self._work is not None:
            await self._work.release("ingestion", ingestion.id)

    async def _progress(self, ingestion: Ingestion, stage: IngestStage, done: int, total: int) -> None:
        """Record progress; appended with the next event, or within ``PROGRESS_SECONDS``.

        A small document's whole progress then costs one append with its final
        event instead of one per stage; a large one's still streams live.
        """
        ingestion._pending.append(progress_event(ingestion.id, time.time_ns(), stage, done, total))
        if time.monotonic() - ingestion._flushed >= PROGRESS_SECONDS:
            batch, ingestion._pending = ingestion._pending, []
            await self._events.append_many(ingestion.scope, batch)
            ingestion._flushed = time.monotonic()

    # -- receiving ---------------------------------------------------------------------

    async def begin(self, ingestion: Ingestion) -> None:
        """Record the ingestion (so its session may watch and cancel it) and announce it."""
        ingestion.id = ingestion.id or "ing_" + secrets.token_hex(12)
        await self._catalog.start_ingestion(ingestion.id, ingestion.session_id, ingestion.file_name)
        if self._work is not None:
            await self._work.claim("ingestion", ingestion.id, session=ingestion.session_id)
        try:
            await self._emit(ingestion, started=IngestStarted(file_name=ingestion.file_name,
                                                              media_type=ingestion.media_type))
        except BaseException:
            if self._work is not None:  # not renewed: the reaper fails it once Redis answers
                self._work.disown("ingestion", ingestion.id)
            raise

    async def received(self, ingestion: Ingestion, data: bytes, *, expected: int) -> None:
        ingestion.data += data
        if len(ingestion.data) - ingestion._reported >= RECEIVE_PROGRESS_BYTES:
            ingestion._reported = len(ingestion.data)
            await self._progress(ingestion, IngestStage.RECEIVING, len(ingestion.data), expected)

    def fail_later(self, ingestion: Ingestion, error: BaseException) -> None:
        """Record a failure from a handler that is itself being cancelled (the client left)."""
        self._jobs.spawn(self._ended(ingestion, lambda: self._fail(ingestion, error)), name=f"fail {ingestion.id}")

    async def fail(self, ingestion: Ingestion, error: BaseException) -> Failure:
        await self._ended(ingestion, lambda: self._fail(ingestion, error))
        return to_failure(error)

    async def _ended(self, ingestion: Ingestion, end: Callable[[], Awaitable[object]]) -> None:
        """Run ``end``, the writes that end the ingestion: retried while Redis restarts; if they still
        fail, the work lease is left to lapse and the reaper ends the ingestion (:meth:`fail_orphan`).

        An end that escaped here would leave the ingestion running for ever, its lease renewed.
        """
        async def attempt() -> None:
            try:
                await end()
            except FailedPrecondition as exc:
                if exc.reason != "EVENT_LOG_FINISHED":
                    raise  # else an earlier try wrote the final event and lost the reply
            except aioredis.RedisError as exc:
                raise translated(exc) from exc

        try:
            await retry_unavailable(attempt, seconds=END_RETRY_SECONDS, what="ingestion end")
        except DaveloperError as exc:
            log.warning("an ingestion's end could not be recorded; its lease lapses and the reaper records it: %s",
                        exc, extra={"ingestion_id": ingestion.id})
            if self._work is not None:
                self._work.disown("ingestion", ingestion.id)

    async def fail_orphan(self, fields: Mapping[str, str]) -> None:
        """Fail an ingestion whose instance stopped (its lease lapsed), removing the chunks it stored."""
        ingestion = Ingestion(id=fields["id"], session_id=fields["session"], file_name="", media_type="")
        if await self._events.finished(ingestion.scope):
            return  # it ended just before its owner could drop the lease
        await discard_version(self._catalog, self._store, ingestion.session_id, ingestion.id)
        lost = Unavailable("the server processing this upload stopped; upload it again", reason="OWNER_LOST",
                           retry_after=0, metadata={"owner": fields.get("owner", "")})
        await self._fail(ingestion, lost)

    async def _fail(self, ingestion: Ingestion, error: BaseException) -> Failure:
        failure = to_failure(error)
        await self._emit(ingestion, final=True, failed=failure)
        return failure

    # -- processing --------------------------------------------------------------------

    def process(self, ingestion: Ingestion) -> None:
        """Process the received bytes in the background (it survives the client leaving)."""
        self._jobs.spawn(self._run(ingestion), name=f"ingest {ingestion.id}")

    async def _run(self, ingestion: Ingestion) -> None:
        outcome: Document | BaseException
        try:
            outcome = await self._events.run_cancellable(ingestion.scope, self._watched_pipeline(ingestion))
        except asyncio.CancelledError:
            # Shutdown: record why the ingestion ended, then let the cancel through.
            interrupted = Unavailable("server shut down during ingestion", reason="INTERRUPTED", retry_after=0)
            await asyncio.shield(self._ended(ingestion, lambda: self._abandon(ingestion, interrupted)))
            raise
        except Exception as exc:  # a failure, or Cancelled
            outcome = translated(exc)  # e.g. Redis unreachable: UNAVAILABLE, not a fault of ours
        if isinstance(outcome, Document):
            document = outcome
            await self._ended(ingestion, lambda: self._emit(ingestion, final=True, stored=document))
            log.info("document stored", extra={"document_id": outcome.id, "chunks": outcome.chunk_count})
        else:
            error = outcome
            await self._ended(ingestion, lambda: self._abandon(ingestion, error))

    def receiving(self, ingestion: Ingestion) -> contextlib.AbstractAsyncContextManager[None]:
        """Around the receipt of an upload's bytes: a client that sends none for the leases' ``stall_seconds``
        is stopped there (:class:`~daveloper.ownership.NoProgress`), and the ingestion fails."""
        if self._work is None:
            return contextlib.nullcontext()
        return self._work.watch("ingestion", ingestion.id, lambda: len(ingestion.data))

    async def _watched_pipeline(self, ingestion: Ingestion) -> Document:
        if self._work is None:
            return await self._pipeline(ingestion)
        # Progress events go out at least per pool stage and per batch stored (pending ones count).
        async with self._work.watch("ingestion", ingestion.id, lambda: (ingestion._flushed, len(ingestion._pending))):
            return await self._pipeline(ingestion)

    async def _abandon(self, ingestion: Ingestion, error: BaseException) -> None:
        """Remove what the ingestion stored, then record its failure."""
        if not isinstance(error, DaveloperError):
            log.error("ingestion failed", exc_info=error, extra={"ingestion_id": ingestion.id})
        await discard_version(self._catalog, self._store, ingestion.session_id, ingestion.id)
        await self._fail(ingestion, error)

    async def ingest(self, ingestion: Ingestion) -> Document:
        """Ingest ``ingestion.data`` in the caller's task, with no events of its own.

        For pipelines that report on their own event log (scraper jobs). On
        failure or cancellation whatever was stored is removed before the error
        propagates, so no partial document is left behind.
        """
        ingestion.id = ingestion.id or "ing_" + secrets.token_hex(12)
        try:
            return await self._pipeline(ingestion, report=False)
        except BaseException:
            await asyncio.shield(discard_version(self._catalog, self._store, ingestion.session_id, ingestion.id))
            raise

    async def _pipeline(self, ingestion: Ingestion, *, report: bool = True) -> Document:
        started, size = time.perf_counter(), len(ingestion.data)
        try:
            document = await self._stages(ingestion, report=report)
        except asyncio.CancelledError:
            self._cancelled.inc()
            raise
        except Exception:
            self._failed.inc()
            raise
        self._stored.inc()
        self._bytes.inc(size)
        self._seconds.observe(time.perf_counter() - started)
        return document

    async def _stages(self, ingestion: Ingestion, *, report: bool) -> Document:
        async def progress(stage: IngestStage, done: int, total: int) -> None:
            if report:
                await self._progress(ingestion, stage, done, total)

        data = bytes(ingestion.data)
        ingestion.data = bytearray()  # the job owns the only copy now
        size = len(data)
        await progress(IngestStage.RECEIVING, len(data), len(data))
        # hashlib releases the GIL: hashing 30 MB in a thread keeps the loop serving meanwhile
        digest = hashlib.sha256(data) if size < HASH_IN_THREAD_BYTES else await asyncio.to_thread(hashlib.sha256, data)
        content_hash = digest.hexdigest()
        document_id = await document_id_of(self._catalog, ingestion.session_id, content_hash,
                                           client_document_id=ingestion.client_document_id,
                                           source_uri=ingestion.source_uri)
        existing = await self._catalog.find(ingestion.session_id, document_id)
        if existing is not None and existing.content_hash == content_hash:
            return existing  # identical content: nothing new to store
        await self._catalog.check_quota(ingestion.session_id, len(data), replacing=existing)
        # A new version is written beside the current one, hidden from searches until it replaces it.
        await self._catalog.stage(ingestion.session_id, document_id, ingestion.id)

        outline, batches = await self._process(ingestion, data, progress)
        del data
        stored = 0
        for drafts, vectors in batches:
            await self._store.upsert(
                ingestion.session_id, document_id, ingestion.id, drafts, vectors,
                document_name=ingestion.file_name, source_uri=ingestion.source_uri, metadata=ingestion.metadata,
            )
            stored += len(drafts)
            await progress(IngestStage.STORING, stored, outline.chunk_count)
        chunks = [draft for drafts, _ in batches for draft in drafts]

        document = Document(
            id=document_id,
            name=ingestion.file_name,
            media_type=outline.media_type,
            content_hash=content_hash,
            size_bytes=size,
            chunk_count=len(chunks),
            token_count=sum(c.token_count for c in chunks),
            metadata=ingestion.metadata,
            source_uri=ingestion.source_uri,
            title=outline.title,
            language=outline.language,
            create_time=_now(),
            client_document_id=ingestion.client_document_id,
            ingestion_id=ingestion.id,
        )
        return await commit_version(self._catalog, self._store, ingestion.session_id, document, replacing=existing)

    async def _process(
        self, ingestion: Ingestion, data: bytes, progress: Callable[[IngestStage, int, int], Awaitable[None]]
    ) -> tuple[Outline, list[tuple[list[ChunkDraft], list[Vectors]]]]:
        """Chunks and vectors of ``data`` from the pool (plus dense vectors from a hybrid embedder)."""
        outline: Outline | None = None
        batches: list[tuple[list[ChunkDraft], list[Vectors]]] = []
        results = self._pool.process(data, session_id=ingestion.session_id, file_name=ingestion.file_name,
                                     declared_type=ingestion.media_type)
        async with contextlib.aclosing(results):
            async for result in results:
                if isinstance(result, Stage):
                    await progress(_STAGES[result.name], result.done, result.total)
                elif isinstance(result, Outline):
                    outline = result
                elif isinstance(result, ChunkBatch):
                    batches.append((result.drafts, await self._vectors(result)))
        assert outline is not None  # the pool sends it before any chunk, or fails
        return outline, batches

    async def _vectors(self, batch: ChunkBatch) -> list[Vectors]:
        if self._dense is None:
            return [Vectors(sparse=sparse) for sparse in batch.vectors]
        dense = await self._dense.embed_documents([draft.text for draft in batch.drafts])
        return [Vectors(sparse=sparse, dense=vectors.dense)
                for sparse, vectors in zip(batch.vectors, dense, strict=True)]
