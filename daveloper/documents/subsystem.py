"""The documents subsystem started: embedder, chunk store, catalog, search, parse workers, ingestion, servicers.

:func:`open_documents` opens it on a :class:`~daveloper.infra.core.Core` and
closes it in reverse. It serves ``DocumentService`` and ``VectorService`` (both
need Redis and the vector engine), ingests pages the scraper fetched
(:meth:`Documents.ingest_page`), and, as a holder of session data, purges a
session (:meth:`Documents.purge_session`) and counts its document quotas.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from daveloper.documents.catalog import Catalog
from daveloper.documents.embeddings import ClosableEmbedder, HybridEmbedder, make_embedder
from daveloper.documents.ingest import Ingestion, Ingestor, ingestion_scope
from daveloper.documents.pool import DocumentBudget, DocumentPool
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.infra.core import Core
from daveloper.rpc import Authenticator
from daveloper.servicers.document import DocumentService
from daveloper.servicers.vector import VectorService, delete_session_vectors
from daveloper.usage import QuotaReading, hash_fields
from generated.daveloper.v1 import Document, Quota

__all__ = ["Documents", "open_documents"]


@dataclass(frozen=True, slots=True)
class Documents:
    """The running documents subsystem (see the module docstring)."""

    core: Core
    embedder: ClosableEmbedder
    chunk_store: ChunkStore
    catalog: Catalog
    search: DocumentSearch
    #: The worker processes that parse, chunk and embed documents.
    pool: DocumentPool
    ingestor: Ingestor
    #: ``DocumentService`` and ``VectorService``, with the health probes they follow.
    services: dict[object, tuple[str, ...]]

    @property
    def quotas(self) -> Sequence[QuotaReading]:
        settings = self.core.settings
        return [hash_fields(self.catalog.usage_key, ["documents", "bytes"], lambda used: [
            Quota(name="documents", limit=settings.quota_documents, used=used[0]),
            Quota(name="stored_bytes", limit=settings.quota_stored_bytes, used=used[1])])]

    async def purge_session(self, session_id: str) -> None:
        """The session's ingestion logs (named by ids its records list, so first), records, then vectors."""
        for ingestion_id in await self.catalog.ingestion_ids(session_id):
            await self.core.events.delete(ingestion_scope(ingestion_id))
        await self.catalog.purge_session(session_id)
        await delete_session_vectors(self.core.qdrant, session_id, self.chunk_store)

    async def ingest_page(self, session_id: str, data: bytes, name: str, media_type: str, url: str,
                          metadata: dict[str, str]) -> Document:
        """Store a page (or file) a crawl or GitHub job fetched, as a document of ``session_id``."""
        return await self.ingestor.ingest(Ingestion(id="", session_id=session_id, file_name=name,
                                                    media_type=media_type, source_uri=url, metadata=metadata,
                                                    data=bytearray(data)))

    async def document_exists(self, session_id: str, document_id: str) -> bool:
        return await self.catalog.find(session_id, document_id) is not None


@contextlib.asynccontextmanager
async def open_documents(core: Core, auth: Authenticator) -> AsyncIterator[Documents]:
    """Start the documents subsystem on ``core``, its servicers checking calls with ``auth``; close in reverse."""
    settings, redis = core.settings, core.redis
    async with contextlib.AsyncExitStack() as stack:
        embedder = make_embedder(
            settings.embedder, redis=redis, openai_model=settings.embedding_model,
            openai_base_url=settings.embedding_base_url, openai_api_key=settings.embedding_api_key,
            dense_size=settings.embedding_size, redactor=core.redactor, prefix=settings.redis_prefix,
        )
        stack.push_async_callback(embedder.aclose)
        chunk_store = ChunkStore(core.qdrant, dense_size=embedder.dense_size, embedder=embedder.name)
        await chunk_store.ensure_collection()
        catalog = Catalog(redis, prefix=settings.redis_prefix, ingestion_ttl_seconds=settings.event_ttl_seconds,
                          max_documents=settings.quota_documents, max_bytes=settings.quota_stored_bytes)
        search = DocumentSearch(chunk_store, embedder, catalog=catalog)  # one version of each document
        pool = DocumentPool(workers=settings.parse_workers, budget=DocumentBudget(
            cpu_seconds=settings.parse_cpu_seconds, memory_bytes=settings.parse_memory_mb << 20,
            max_chunks=settings.parse_max_chunks))
        stack.push_async_callback(pool.aclose)  # its workers start with the first document
        # The ingestions running on the pool end first (the stack unwinds in reverse; closing twice is a no-op).
        stack.push_async_callback(core.jobs.aclose)
        ingestor = Ingestor(events=core.events, catalog=catalog, store=chunk_store, pool=pool, jobs=core.jobs,
                            dense=embedder.dense if isinstance(embedder, HybridEmbedder) else None,
                            work=core.work, metrics=core.metrics)
        core.work.on_orphan("ingestion", ingestor.fail_orphan)
        services: dict[object, tuple[str, ...]] = {
            DocumentService(auth=auth, ingestor=ingestor, catalog=catalog, chunks=chunk_store, search=search,
                            events=core.events, max_upload_bytes=settings.max_upload_bytes, audit=core.audit,
                            heartbeat_seconds=settings.heartbeat_seconds): ("redis", "qdrant"),
            VectorService(auth=auth, qdrant=core.qdrant): ("redis", "qdrant"),
        }
        yield Documents(core, embedder, chunk_store, catalog, search, pool, ingestor, services)
