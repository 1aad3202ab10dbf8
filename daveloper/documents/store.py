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

Point ids are UUID5 of (session, document, ingestion, chunk index): an
ingestion that writes its chunks again overwrites them, and a new version of a
document (another ingestion) is written beside the current one until the
catalog switches to it (see ``documents/versions.py``). Searches leave out the
points of versions the catalog hides: those still being written and those
replaced but not yet deleted.

The store speaks to a :class:`~daveloper.vectors.VectorEngine` (Qdrant Edge in
process, or a Qdrant server), with payload indexes on the fields every call
filters by: ``session_id`` (the tenant), ``document_id``, ``ingestion_id``, ``index``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from daveloper.documents.model import ChunkDraft, Hit, SearchMode, Vectors
from daveloper.errors import AlreadyExists, ConfigError, NotFound
from daveloper.vectors import (
    CollectionSpec,
    Condition,
    DenseParams,
    Distance,
    IndexKind,
    Match,
    MatchAny,
    MatchExcept,
    Nearest,
    PointData,
    PointQuery,
    Range,
    Record,
    Sparse,
    SparseParams,
    VectorEngine,
)

__all__ = ["CHUNKS_COLLECTION", "CHUNK_INDEXES", "DENSE", "SPARSE", "ChunkStore", "chunk_id"]

CHUNKS_COLLECTION = "dv_chunks"
SPARSE = "bm25"
DENSE = "dense"
#: Payload indexes of the chunk collection: the fields every query, count and delete filters by.
CHUNK_INDEXES: Mapping[str, IndexKind] = {
    "session_id": IndexKind.TENANT,
    "document_id": IndexKind.KEYWORD,
    "ingestion_id": IndexKind.KEYWORD,
    "index": IndexKind.INTEGER,
}

_NAMESPACE = uuid.UUID("6f0c3a52-8f7e-4d55-9a39-4f1c0b8e2d11")


def chunk_id(session_id: str, document_id: str, index: int, ingestion_id: str) -> str:
    """The point id of a chunk: stable for the same session, document, version (ingestion) and position."""
    return str(uuid.uuid5(_NAMESPACE, f"{session_id}\0{document_id}\0{ingestion_id}\0{index}"))


def _metadata_key(key: str) -> str:
    # Quoted, so keys with dots or spaces address one metadata entry, not a nested path.
    if not key or '"' in key or "\\" in key:
        raise ValueError(f"unusable metadata key {key!r}")
    return f'metadata."{key}"'


def _hit(record: Record) -> Hit:
    p: dict[str, Any] = record.payload
    return Hit(
        chunk_id=record.id,
        document_id=p.get("document_id", ""),
        index=int(p.get("index", 0)),
        text=p.get("text", ""),
        score=record.score,
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
        engine: VectorEngine,
        *,
        dense_size: int | None = None,
        embedder: str = "bm25",
        collection: str = CHUNKS_COLLECTION,
        session_idf: bool = True,
    ) -> None:
        self._engine = engine
        self.dense_size = dense_size
        self.embedder = embedder
        self.collection = collection
        self._session_idf = session_idf
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ensure_collection(self) -> None:
        """Create the collection and its payload indexes if missing; check an existing one fits."""
        async with self._ready_lock:
            if self._ready:
                return
            try:
                info = await self._engine.describe(self.collection)
            except NotFound:
                spec = CollectionSpec(
                    dense={DENSE: DenseParams(self.dense_size, Distance.COSINE)} if self.dense_size else {},
                    sparse={SPARSE: SparseParams(idf=True)},
                    indexes=CHUNK_INDEXES,
                )
                # Another instance may create it between our check and our create.
                with contextlib.suppress(AlreadyExists):
                    await self._engine.create_collection(self.collection, spec)
                info = await self._engine.describe(self.collection)
            dense = info.dense.get(DENSE)
            if self.dense_size and (dense is None or dense.size != self.dense_size):
                have = dense.size if dense else "no"
                raise ConfigError(
                    f"Qdrant collection {self.collection} has {have} dense vectors but the embedder makes "
                    f"{self.dense_size}-dimensional ones: configure another chunk collection, or delete it to "
                    "re-ingest"
                )
            # A collection from an earlier version (or a migrated one) may lack an index.
            for field, kind in CHUNK_INDEXES.items():
                if info.indexes.get(field) is not kind:
                    await self._engine.create_index(self.collection, field, kind)
            self._ready = True

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
        """Store a document's chunks with their vectors (``vectors[i]`` belongs to ``chunks[i]``).

        The engine writes them in bounded batches, so a large document never
        holds the event loop for long.
        """
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        await self.ensure_collection()
        points = []
        for chunk, vector in zip(chunks, vectors, strict=True):
            named: dict[str, Sequence[float] | Sparse] = {}
            if vector.sparse is not None:
                named[SPARSE] = Sparse(vector.sparse.indices, vector.sparse.values)
            if vector.dense is not None and self.dense_size:
                named[DENSE] = vector.dense
            payload = {
                "session_id": session_id, "document_id": document_id, "ingestion_id": ingestion_id,
                "index": chunk.index, "text": chunk.text, "token_count": chunk.token_count,
                "heading_path": list(chunk.heading_path), "page": chunk.page,
                "start_line": chunk.start_line, "end_line": chunk.end_line,
                "document_name": document_name, "source_uri": source_uri,
                "metadata": dict(metadata or {}), "embedder": self.embedder,
            }
            points.append(PointData(chunk_id(session_id, document_id, chunk.index, ingestion_id), named, payload))
        await self._engine.upsert(self.collection, points)

    async def _delete(self, *conditions: Condition) -> None:
        await self.ensure_collection()
        await self._engine.delete_where(self.collection, conditions)

    async def delete_document(self, session_id: str, document_id: str, *, keep: str = "") -> None:
        """Remove every chunk of one of the session's documents (but those of ingestion ``keep``, if given)."""
        where: tuple[Condition, ...] = (Match("session_id", session_id), Match("document_id", document_id))
        if keep:
            where += (MatchExcept("ingestion_id", (keep,)),)
        await self._delete(*where)

    async def delete_ingestion(self, session_id: str, ingestion_id: str) -> None:
        """Remove the chunks one ingestion wrote (cleanup after it was cancelled or failed)."""
        await self._delete(Match("session_id", session_id), Match("ingestion_id", ingestion_id))

    async def delete_session(self, session_id: str) -> None:
        """Remove every chunk of the session."""
        await self._delete(Match("session_id", session_id))

    async def count(self, session_id: str, document_id: str | None = None) -> int:
        """How many chunks the session has (in one document, if given)."""
        await self.ensure_collection()
        where: tuple[Condition, ...] = (Match("session_id", session_id),)
        if document_id is not None:
            where += (Match("document_id", document_id),)
        return await self._engine.count(self.collection, where)

    async def chunks(self, session_id: str, document_id: str, *, offset: int = 0, limit: int = 20,
                     ingestion_id: str = "") -> list[Hit]:
        """A document's chunks ``offset .. offset+limit-1`` in order (score 0), e.g. for a preview.

        ``ingestion_id`` names the version to read (the catalog record's); without it, chunks of a
        version being written beside the current one could be mixed in.
        """
        await self.ensure_collection()
        # Chunk indexes are dense (0..n-1), so a range filter pages without an order_by.
        where: tuple[Condition, ...] = (Match("session_id", session_id), Match("document_id", document_id),
                                        Range("index", gte=offset, lt=offset + limit))
        if ingestion_id:
            where += (Match("ingestion_id", ingestion_id),)
        records, _ = await self._engine.scroll(self.collection, where, limit=limit)
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
        hidden: Sequence[str] = (),
    ) -> list[Hit]:
        """The session's ``top_k`` chunks nearest to ``query``: sparse, dense, or both fused with RRF.

        ``hidden`` lists ingestions whose chunks are left out (versions not current; see
        :meth:`~daveloper.documents.catalog.Catalog.visibility`).

        ``mode`` must have the vectors it needs in ``query`` (``ValueError``
        otherwise); a query without sparse terms (only stop words) finds nothing
        in sparse mode and falls back to dense in hybrid mode.
        """
        await self.ensure_collection()
        session = Match("session_id", session_id)
        where: tuple[Condition, ...] = (session,)
        if document_ids:
            where += (MatchAny("document_id", tuple(document_ids)),)
        for key, value in (metadata_filter or {}).items():
            where += (Match(_metadata_key(key), value),)
        if hidden:
            where += (MatchExcept("ingestion_id", tuple(hidden)),)

        if mode is not SearchMode.SPARSE and query.dense is None:
            raise ValueError(f"{mode.value} search needs a dense query vector")
        if mode is SearchMode.SPARSE and query.sparse is None:
            raise ValueError("sparse search needs a sparse query vector")
        # IDF over this session's chunks only (see the module docstring).
        sparse = (Nearest(SPARSE, Sparse(query.sparse.indices, query.sparse.values),
                          idf_corpus=(session,) if self._session_idf else None)
                  if query.sparse is not None and query.sparse.indices else None)
        dense = Nearest(DENSE, query.dense) if query.dense is not None else None

        if mode is SearchMode.SPARSE:
            if sparse is None:
                return []
            stages: tuple[Nearest, ...] = (sparse,)
        elif mode is SearchMode.DENSE or sparse is None:
            assert dense is not None
            stages = (dense,)
        else:
            assert dense is not None
            stages = (sparse, dense)
        # With two stages, each proposes more candidates than asked, so fusion can promote a chunk
        # that only one side ranks highly.
        depth = min(max(top_k * 4, 20), 200)
        records = await self._engine.query_points(self.collection,
                                                  PointQuery(stages, limit=top_k, where=where, depth=depth))
        return [_hit(record) for record in records]
