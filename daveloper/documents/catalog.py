"""The session's document records and ingestion records, in Redis.

Chunks and vectors live in Qdrant; this is the list of documents a session
has, how to find one by content hash or by the client's id, and who owns each
ingestion. Records are the ``Document`` protobuf message itself, so no second
schema has to be kept in step with the contract.

Keys (``dv:`` prefix)::

    dv:doc:<session>:<document>    Document message (bytes)
    dv:docs:<session>              sorted set of document ids, scored by creation time
    dv:docclient:<session>         hash client_document_id -> document id
    dv:ingestion:<id>              hash session, document name (who may watch or cancel it)
    dv:ingestions:<session>        set of the session's ingestion ids (to purge them with the session)
    dv:docversion:<session>        counter bumped by every store and delete (what a cached search result
                                   was computed against; see :meth:`Catalog.version_key`)
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from daveloper.errors import NotFound, ResourceExhausted
from daveloper.infra.redis import reply_text
from daveloper.paging import next_page_token, page_offset
from generated.daveloper.v1 import Document

__all__ = ["Catalog", "document_id_for"]


def document_id_for(session_id: str, content_hash: str) -> str:
    """The id of a session's document with this content.

    Derived, not random: uploading identical content again (even concurrently)
    lands on the same document and the same chunk ids, so nothing is duplicated.
    """
    return "doc_" + hashlib.sha256(f"{session_id}\0{content_hash}".encode()).hexdigest()[:24]


class Catalog:
    """Document and ingestion records of every session."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "dv:", ingestion_ttl_seconds: int = 7 * 24 * 3600,
                 max_documents: int = 0, max_bytes: int = 0):
        self._redis = redis
        self._prefix = prefix
        self._ingestion_ttl = ingestion_ttl_seconds
        #: Per-session quotas (0: none).
        self.max_documents = max_documents
        self.max_bytes = max_bytes

    def _usage(self, session_id: str) -> str:
        return f"{self._prefix}docusage:{session_id}"

    def usage_key(self, session_id: str) -> str:
        """The hash of the session's usage (fields ``documents`` and ``bytes``) :meth:`usage` reads."""
        return self._usage(session_id)

    async def usage(self, session_id: str) -> tuple[int, int]:
        """(documents, stored bytes) of a session."""
        documents, size = await self._redis.hmget(self._usage(session_id), ["documents", "bytes"])
        return int(documents or 0), int(size or 0)

    async def check_quota(self, session_id: str, size: int) -> None:
        """RESOURCE_EXHAUSTED if one more document of ``size`` bytes would exceed the session's quotas."""
        documents, stored = await self.usage(session_id)
        if self.max_documents and documents + 1 > self.max_documents:
            raise ResourceExhausted(f"this session already holds {documents} documents, its quota",
                                    reason="QUOTA_DOCUMENTS", metadata={"limit": str(self.max_documents)})
        if self.max_bytes and stored + size > self.max_bytes:
            raise ResourceExhausted(
                f"storing {size} more bytes would exceed this session's quota of {self.max_bytes} bytes "
                f"({stored} used); delete documents to make room",
                reason="QUOTA_STORED_BYTES", metadata={"limit": str(self.max_bytes), "used": str(stored)})

    def version_key(self, session_id: str) -> str:
        """The counter of the session's document changes: bumped in the same transaction as every
        :meth:`put` and :meth:`delete` (both run after the chunks are written or removed), so a result
        computed while it held a value reflects the documents as they were at that value."""
        return f"{self._prefix}docversion:{session_id}"

    def _doc(self, session_id: str, document_id: str) -> str:
        return f"{self._prefix}doc:{session_id}:{document_id}"

    def _docs(self, session_id: str) -> str:
        return f"{self._prefix}docs:{session_id}"

    def _clients(self, session_id: str) -> str:
        return f"{self._prefix}docclient:{session_id}"

    def _ingestion(self, ingestion_id: str) -> str:
        return f"{self._prefix}ingestion:{ingestion_id}"

    def _ingestions(self, session_id: str) -> str:
        return f"{self._prefix}ingestions:{session_id}"

    async def ingestion_ids(self, session_id: str) -> list[str]:
        """The session's ingestions whose records have not expired yet (or a few that have)."""
        return [reply_text(i) for i in await self._redis.smembers(self._ingestions(session_id))]

    async def put(self, session_id: str, document: Document) -> None:
        assert document.create_time is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._doc(session_id, document.id), bytes(document))
            pipe.zadd(self._docs(session_id), {document.id: document.create_time.timestamp()})
            pipe.hincrby(self._usage(session_id), "documents", 1)
            pipe.hincrby(self._usage(session_id), "bytes", document.size_bytes)
            if document.client_document_id:
                pipe.hset(self._clients(session_id), document.client_document_id, document.id)
            pipe.incr(self.version_key(session_id))
            await pipe.execute()

    async def find(self, session_id: str, document_id: str) -> Document | None:
        raw = await self._redis.get(self._doc(session_id, document_id))
        return None if raw is None else Document.parse(raw)

    async def get(self, session_id: str, document_id: str) -> Document:
        """The document, or NOT_FOUND — also when it belongs to another session."""
        document = await self.find(session_id, document_id) if document_id else None
        if document is None:
            raise NotFound(f"document {document_id!r} not found", reason="DOCUMENT_NOT_FOUND")
        return document

    async def find_by_client_id(self, session_id: str, client_document_id: str) -> Document | None:
        document_id = await self._redis.hget(self._clients(session_id), client_document_id)
        return None if document_id is None else await self.find(session_id, reply_text(document_id))

    async def page(self, session_id: str, *, page_size: int, page_token: str) -> tuple[list[Document], str]:
        """Newest first; returns the page and the next page's token ("" at the end)."""
        offset = page_offset(page_token)
        ids = await self._redis.zrevrange(self._docs(session_id), offset, offset + page_size)
        more = len(ids) > page_size
        ids = ids[:page_size]
        raws = await self._redis.mget([self._doc(session_id, reply_text(i)) for i in ids]) if ids else []
        documents = [Document.parse(raw) for raw in raws if raw is not None]
        return documents, next_page_token(offset + page_size, more=more)

    async def delete(self, session_id: str, document: Document) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._doc(session_id, document.id))
            pipe.zrem(self._docs(session_id), document.id)
            pipe.hincrby(self._usage(session_id), "documents", -1)
            pipe.hincrby(self._usage(session_id), "bytes", -document.size_bytes)
            if document.client_document_id:
                pipe.hdel(self._clients(session_id), document.client_document_id)
            pipe.incr(self.version_key(session_id))
            await pipe.execute()

    async def document_ids(self, session_id: str) -> list[str]:
        return [reply_text(i) for i in await self._redis.zrange(self._docs(session_id), 0, -1)]

    async def purge_session(self, session_id: str) -> None:
        """Remove every document record of a session (its points are removed by the store)."""
        ids = await self.document_ids(session_id)
        keys = [self._doc(session_id, i) for i in ids] + [self._docs(session_id), self._clients(session_id),
                                                           self._usage(session_id), self._ingestions(session_id),
                                                           self.version_key(session_id)]
        keys += [self._ingestion(i) for i in await self.ingestion_ids(session_id)]
        await self._redis.delete(*keys)

    async def start_ingestion(self, ingestion_id: str, session_id: str, file_name: str) -> None:
        key = self._ingestion(ingestion_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"session": session_id, "name": file_name})
            pipe.expire(key, self._ingestion_ttl)
            pipe.sadd(self._ingestions(session_id), ingestion_id)
            pipe.expire(self._ingestions(session_id), self._ingestion_ttl)
            await pipe.execute()

    async def check_ingestion(self, session_id: str, ingestion_id: str) -> None:
        """NOT_FOUND unless the ingestion exists and belongs to this session."""
        owner = await self._redis.hget(self._ingestion(ingestion_id), "session") if ingestion_id else None
        if owner is None or reply_text(owner) != session_id:
            raise NotFound(f"ingestion {ingestion_id!r} not found", reason="INGESTION_NOT_FOUND")
