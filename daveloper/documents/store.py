"""Chunks and their vectors in one Qdrant collection, every read and write fenced by session.

One collection (``dv_chunks``) holds every session's chunks; each point carries
its ``session_id`` and every query, count and delete is filtered on it, so a
session can neither see nor remove another's chunks. (One collection per
session would make Qdrant's per-collection overhead grow with sessions; a
keyword index with ``is_tenant`` on ``session_id`` is Qdrant's recommended
multitenancy layout instead.)

Vectors, named:

* ``bm25``: sparse, with ``Modifier.IDF`` so Qdrant weights query terms by their
  live document frequency (see ``embeddings/bm25.py``); IDF is measured over
  the querying session's chunks only, so neither relevance nor term statistics
  leak between sessions;
* ``dense``: cosine, present when the embedder makes dense vectors.

Point ids are UUID5 of (session, document, chunk index): re-storing the same
document overwrites its points instead of duplicating them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from daveloper.documents.model import ChunkDraft, Hit, SearchMode, Vectors
from daveloper.errors import AlreadyExists, ConfigError
from daveloper.infra.qdrant import qdrant_errors

__all__ = ["CHUNKS_COLLECTION", "DENSE", "SPARSE", "ChunkStore", "chunk_id"]

CHUNKS_COLLECTION = "dv_chunks"
SPARSE = "bm25"
DENSE = "dense"

_NAMESPACE = uuid.UUID("6f0c3a52-8f7e-4d55-9a39-4f1c0b8e2d11")


def chunk_id(session_id: str, document_id: str, index: int) -> str:
    """The point id of a chunk: stable for the same session, document and position."""
    return str(uuid.uuid5(_NAMESPACE, f"{session_id}\0{document_id}\0{index}"))


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _metadata_key(key: str) -> str:
    # Quoted, so keys with dots or spaces address one metadata entry, not a nested path.
    if not key or '"' in key or "\\" in key:
        raise ValueError(f"unusable metadata key {key!r}")
    return f'metadata."{key}"'


def _hit(point: models.ScoredPoint | models.Record) -> Hit:
    p: dict[str, Any] = point.payload or {}
    return Hit(
        chunk_id=str(point.id),
        document_id=p.get("document_id", ""),
        index=int(p.get("index", 0)),
        text=p.get("text", ""),
        score=float(getattr(point, "score", 0.0) or 0.0),
        token_count=int(p.get("token_count", 0)),
        heading_path=tuple(p.get("heading_path") or ()),
        page=int(p.get("page", 0)),
        start_line=int(p.get("start_line", 0)),
        end_line=int(p.get("end_line", 0)),
        document_name=p.get("document_name", ""),
        source_uri=p.get("source_uri", ""),
        metadata=dict(p.get("metadata") or {}),
    )


class ChunkStore:
    """Stores, deletes and searches a session's chunks (see the module docstring).

    ``dense_size`` is the embedder's; ``embedder`` its name, kept on each point
    so an operator can tell which model made it. The collection is created on
    first use; one created for another dense size raises ``ConfigError``.
    ``session_idf=False`` measures IDF over the whole collection instead of the
    session, for Qdrant servers that predate IDF corpus filters.
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        dense_size: int | None = None,
        embedder: str = "bm25",
        collection: str = CHUNKS_COLLECTION,
        batch_size: int = 256,
        session_idf: bool = True,
    ) -> None:
        self._client = client
        self.dense_size = dense_size
        self.embedder = embedder
        self.collection = collection
        self._batch_size = batch_size
        self._session_idf = session_idf
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ensure_collection(self) -> None:
        """Create the collection and its payload indexes if missing; check an existing one fits."""
        async with self._ready_lock:
            if self._ready:
                return
            with qdrant_errors(f"collection {self.collection}"):
                if not await self._client.collection_exists(self.collection):
                    # Another instance may create it between our check and our create.
                    with contextlib.suppress(AlreadyExists):
                        await self._create()
                await self._check_compatible()
            self._ready = True

    async def _create(self) -> None:
        with qdrant_errors(f"collection {self.collection}"):
            await self._client.create_collection(
                self.collection,
                vectors_config=(
                    {DENSE: models.VectorParams(size=self.dense_size, distance=models.Distance.COSINE)}
                    if self.dense_size else {}
                ),
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
        tenant = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        indexes: dict[str, models.PayloadSchemaType | models.KeywordIndexParams] = {
            "session_id": tenant,
            "document_id": models.PayloadSchemaType.KEYWORD,
            "ingestion_id": models.PayloadSchemaType.KEYWORD,
            "index": models.PayloadSchemaType.INTEGER,
        }
        with warnings.catch_warnings():
            # Local mode warns that it has no payload indexes; a server uses them.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field, schema in indexes.items():
                await self._client.create_payload_index(self.collection, field, field_schema=schema)

    async def _check_compatible(self) -> None:
        info = await self._client.get_collection(self.collection)
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if self.dense_size and (dense is None or dense.size != self.dense_size):
            have = dense.size if dense else "no"
            raise ConfigError(
                f"Qdrant collection {self.collection} has {have} dense vectors but the embedder makes "
                f"{self.dense_size}-dimensional ones: configure another chunk collection, or delete it to re-ingest"
            )

    async def upsert(
        self,
        session_id: str,
        document_id: str,
        ingestion_id: str,
        chunks: Sequence[ChunkDraft],
        vectors: Sequence[Vectors],
        *,
        document_name: str = "",
        source_uri: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store a document's chunks with their vectors (``vectors[i]`` belongs to ``chunks[i]``)."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        await self.ensure_collection()
        points = []
        for chunk, vector in zip(chunks, vectors, strict=True):
            named: dict[str, Any] = {}
            if vector.sparse is not None:
                named[SPARSE] = models.SparseVector(indices=list(vector.sparse.indices),
                                                    values=list(vector.sparse.values))
            if vector.dense is not None and self.dense_size:
                named[DENSE] = list(vector.dense)
            payload = {
                "session_id": session_id, "document_id": document_id, "ingestion_id": ingestion_id,
                "index": chunk.index, "text": chunk.text, "token_count": chunk.token_count,
                "heading_path": list(chunk.heading_path), "page": chunk.page,
                "start_line": chunk.start_line, "end_line": chunk.end_line,
                "document_name": document_name, "source_uri": source_uri,
                "metadata": dict(metadata or {}), "embedder": self.embedder,
            }
            points.append(models.PointStruct(id=chunk_id(session_id, document_id, chunk.index),
                                             vector=named, payload=payload))
        with qdrant_errors(f"storing chunks of {document_id}"):
            for start in range(0, len(points), self._batch_size):
                await self._client.upsert(self.collection, points[start:start + self._batch_size], wait=True)

    async def _delete(self, what: str, *conditions: models.FieldCondition) -> None:
        await self.ensure_collection()
        selector = models.FilterSelector(filter=models.Filter(must=list(conditions)))
        with qdrant_errors(what):
            await self._client.delete(self.collection, points_selector=selector, wait=True)

    async def delete_document(self, session_id: str, document_id: str) -> None:
        """Remove every chunk of one of the session's documents."""
        await self._delete(f"deleting {document_id}", _match("session_id", session_id),
                           _match("document_id", document_id))

    async def delete_ingestion(self, session_id: str, ingestion_id: str) -> None:
        """Remove the chunks one ingestion wrote (cleanup after it was cancelled or failed)."""
        await self._delete(f"deleting ingestion {ingestion_id}", _match("session_id", session_id),
                           _match("ingestion_id", ingestion_id))

    async def delete_session(self, session_id: str) -> None:
        """Remove every chunk of the session."""
        await self._delete("deleting session chunks", _match("session_id", session_id))

    async def count(self, session_id: str, document_id: str | None = None) -> int:
        """How many chunks the session has (in one document, if given)."""
        await self.ensure_collection()
        conditions: list[models.Condition] = [_match("session_id", session_id)]
        if document_id is not None:
            conditions.append(_match("document_id", document_id))
        with qdrant_errors("counting chunks"):
            result = await self._client.count(self.collection, count_filter=models.Filter(must=conditions),
                                              exact=True)
        return result.count

    async def chunks(self, session_id: str, document_id: str, *, offset: int = 0, limit: int = 20) -> list[Hit]:
        """A document's chunks ``offset .. offset+limit-1`` in order (score 0), e.g. for a preview."""
        await self.ensure_collection()
        # Chunk indexes are dense (0..n-1), so a range filter pages without Qdrant's order_by.
        window = models.FieldCondition(key="index", range=models.Range(gte=offset, lt=offset + limit))
        query = models.Filter(must=[_match("session_id", session_id), _match("document_id", document_id), window])
        with qdrant_errors(f"reading chunks of {document_id}"):
            records, _ = await self._client.scroll(self.collection, scroll_filter=query, limit=limit,
                                                   with_payload=True)
        return sorted((_hit(r) for r in records), key=lambda hit: hit.index)

    async def search(
        self,
        session_id: str,
        query: Vectors,
        *,
        top_k: int,
        mode: SearchMode,
        document_ids: Sequence[str] = (),
        metadata_filter: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """The session's ``top_k`` chunks nearest to ``query``: sparse, dense, or both fused with RRF.

        ``mode`` must have the vectors it needs in ``query`` (``ValueError``
        otherwise); a query without sparse terms (only stop words) finds nothing
        in sparse mode and falls back to dense in hybrid mode.
        """
        await self.ensure_collection()
        session = _match("session_id", session_id)
        conditions: list[models.Condition] = [session]
        if document_ids:
            conditions.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids))))
        for key, value in (metadata_filter or {}).items():
            conditions.append(_match(_metadata_key(key), value))
        where = models.Filter(must=conditions)
        # IDF over this session's chunks only (see the module docstring).
        idf = (models.SearchParams(idf=models.IdfCorpusParams(corpus=models.Filter(must=[session])))
               if self._session_idf else None)

        sparse = query.sparse if query.sparse is not None and query.sparse.indices else None
        if mode is not SearchMode.SPARSE and query.dense is None:
            raise ValueError(f"{mode.value} search needs a dense query vector")
        if mode is SearchMode.SPARSE and query.sparse is None:
            raise ValueError("sparse search needs a sparse query vector")
        sparse_query = (models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
                        if sparse is not None else None)
        dense_query = list(query.dense) if query.dense is not None else None

        what = "searching chunks"
        with qdrant_errors(what):
            if mode is SearchMode.SPARSE:
                if sparse_query is None:
                    return []
                response = await self._client.query_points(
                    self.collection, query=sparse_query, using=SPARSE, query_filter=where, limit=top_k,
                    search_params=idf, with_payload=True)
            elif mode is SearchMode.DENSE or sparse_query is None:
                response = await self._client.query_points(
                    self.collection, query=dense_query, using=DENSE, query_filter=where, limit=top_k,
                    with_payload=True)
            else:
                # Each side proposes more candidates than asked, so fusion can promote a chunk
                # that only one side ranks highly.
                depth = min(max(top_k * 4, 20), 200)
                response = await self._client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(query=sparse_query, using=SPARSE, filter=where, limit=depth, params=idf),
                        models.Prefetch(query=dense_query, using=DENSE, filter=where, limit=depth),
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    query_filter=where, limit=top_k, with_payload=True)
        return [_hit(point) for point in response.points]
