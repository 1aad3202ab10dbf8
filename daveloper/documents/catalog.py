"""The session's document records and ingestion records, in Redis.

Chunks and vectors live in Qdrant; this is the list of documents a session
has, which version of each is current, how to find one by its identity, and
who owns each ingestion. Records are the ``Document`` protobuf message itself,
so no second schema has to be kept in step with the contract.

A document's id follows from its identity (:func:`document_id_for`), so new
content for the same source is a new *version* of the same document. A
version's chunks are written under its ingestion id while that ingestion is
*hidden* (searches leave its points out); :meth:`Catalog.commit` then swaps
the record and the hidden set in one script: the new version becomes visible
and the old one hidden at the same instant, and the old points are deleted
afterwards. Every change to the hidden set bumps its ``#epoch`` field, which
lets a search tell that the set changed while it ran (see
``documents/search.py``).

Keys (``dv:`` prefix)::

    dv:doc:<session>:<document>    Document message (bytes)
    dv:docs:<session>              sorted set of document ids, scored by creation time
    dv:docclient:<session>         hash client_document_id -> document id
    dv:ingestion:<id>              hash session, document name (who may watch or cancel it)
    dv:ingestions:<session>        set of the session's ingestion ids (to purge them with the session)
    dv:docversion:<session>        counter bumped by every store, replace and delete (what a cached search
                                   result was computed against; see :meth:`Catalog.version_key`)
    dv:dochidden:<session>         hash ingestion id -> document id of versions searches leave
                                   out, and ``#epoch``, bumped by every change that could expose points
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from daveloper.errors import NotFound, ResourceExhausted
from daveloper.infra.redis import reply_text
from daveloper.keys import Keys
from daveloper.paging import next_page_token, page_offset
from generated.daveloper.v1 import Document

__all__ = ["Catalog", "document_id_for"]


_EPOCH = "#epoch"


# Make a version current if the record is still the one it replaces (compare-and-set on the stored bytes):
# record, list, client id, usage, change counter and hidden set change together.
# KEYS: doc, docs, clients, usage, docversion, hidden
# ARGV: expected record ('' for none), new record, document id, score, client id, new ingestion,
#       replaced ingestion ('' for none), bytes delta, document id
_COMMIT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if ARGV[1] == '' then redis.call('HINCRBY', KEYS[4], 'documents', 1) end
redis.call('HINCRBY', KEYS[4], 'bytes', ARGV[8])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[3]) end
redis.call('INCR', KEYS[5])
redis.call('HDEL', KEYS[6], ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[6], ARGV[7], ARGV[9]) end
redis.call('HINCRBY', KEYS[6], '#epoch', 1)
return 1
"""

# Remove a record if it is still the one read, hiding its version's points until they are deleted.
# KEYS: doc, docs, clients, usage, docversion, hidden
# ARGV: expected record, document id, client id, size, ingestion ('' for none)
_DELETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[4], 'documents', -1)
redis.call('HINCRBY', KEYS[4], 'bytes', -tonumber(ARGV[4]))
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], ARGV[3]) == ARGV[2] then redis.call('HDEL', KEYS[3], ARGV[3]) end
redis.call('INCR', KEYS[5])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[6], ARGV[5], ARGV[2])
  redis.call('HINCRBY', KEYS[6], '#epoch', 1)
end
return 1
"""


def document_id_for(session_id: str, content_hash: str, *, client_document_id: str = "", source_uri: str = "") -> str:
    """The id of a session's document: derived from its identity, not random.

    The identity is the client's id if the upload has one, else the source URI
    (a crawled page, a GitHub file), else the content: new content for the same
    identity is a new version of the same document, and identical content
    without a source (even uploaded concurrently) lands on the same document.
    """
    if client_document_id:
        identity = f"client\0{client_document_id}"
    elif source_uri:
        identity = f"source\0{source_uri}"
    else:
        identity = content_hash  # the ids of content-identified documents are unchanged from before versions
    return "doc_" + hashlib.sha256(f"{session_id}\0{identity}".encode()).hexdigest()[:24]


class Catalog:
    """Document and ingestion records of every session."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "dv:", ingestion_ttl_seconds: int = 7 * 24 * 3600,
                 max_documents: int = 0, max_bytes: int = 0):
        self._redis = redis
        self._keys = Keys(prefix)
        self._ingestion_ttl = ingestion_ttl_seconds
        self._commit = redis.register_script(_COMMIT)
        self._delete = redis.register_script(_DELETE)
        #: Per-session quotas (0: none).
        self.max_documents = max_documents
        self.max_bytes = max_bytes

    def _usage(self, session_id: str) -> str:
        return self._keys.document_usage(session_id)

    def usage_key(self, session_id: str) -> str:
        """The hash of the session's usage (fields ``documents`` and ``bytes``) :meth:`usage` reads."""
        return self._usage(session_id)

    async def usage(self, session_id: str) -> tuple[int, int]:
        """(documents, stored bytes) of a session."""
        documents, size = await self._redis.hmget(self._usage(session_id), ["documents", "bytes"])
        return int(documents or 0), int(size or 0)

    async def check_quota(self, session_id: str, size: int, *, replacing: Document | None = None) -> None:
        """RESOURCE_EXHAUSTED if one more document of ``size`` bytes would exceed the session's quotas.

        A new version ``replacing`` a document takes no new document and frees the old version's bytes.
        """
        documents, stored = await self.usage(session_id)
        if replacing is not None:
            documents, stored = documents - 1, stored - replacing.size_bytes
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
        return self._keys.document_version(session_id)

    # Every name carries the session's hash tag: the scripts over a session's records stay in one slot.
    def _doc(self, session_id: str, document_id: str) -> str:
        return self._keys.document(session_id, document_id)

    def _docs(self, session_id: str) -> str:
        return self._keys.documents(session_id)

    def _clients(self, session_id: str) -> str:
        return self._keys.document_clients(session_id)

    def _hidden(self, session_id: str) -> str:
        return self._keys.document_hidden(session_id)

    def _record_keys(self, session_id: str, document_id: str) -> list[str]:
        return [self._doc(session_id, document_id), self._docs(session_id), self._clients(session_id),
                self._usage(session_id), self.version_key(session_id), self._hidden(session_id)]

    def _ingestion(self, ingestion_id: str) -> str:
        return self._keys.ingestion(ingestion_id)

    def _ingestions(self, session_id: str) -> str:
        return self._keys.ingestions(session_id)

    async def ingestion_ids(self, session_id: str) -> list[str]:
        """The session's ingestions whose records have not expired yet (or a few that have)."""
        return [reply_text(i) for i in await self._redis.smembers(self._ingestions(session_id))]

    # -- versions ----------------------------------------------------------------------

    async def stage(self, session_id: str, document_id: str, ingestion_id: str) -> None:
        """Hide the points ``ingestion_id`` is about to write, until :meth:`commit` makes them current.

        Entries never expire: one is removed only once its points are gone (:meth:`release`), since
        an entry dropped earlier would let a failed or replaced version's points be searched again.
        """
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._hidden(session_id), ingestion_id, document_id)
            pipe.hincrby(self._hidden(session_id), _EPOCH, 1)
            await pipe.execute()

    async def commit(self, session_id: str, document: Document, replaced: bytes) -> bool:
        """Make ``document`` (a new version, written under ``document.ingestion_id``) current.

        ``replaced`` is the stored record it replaces, as :meth:`current` read it (``b""`` for none).
        In one script, if the record is still ``replaced``: the record, the session's list, usage and
        change counter are updated, the new version's points stop being hidden and the replaced
        version's start to be. False, changing nothing, if another change came first.
        """
        assert document.create_time is not None
        old = Document.parse(replaced) if replaced else None
        delta = document.size_bytes - (old.size_bytes if old is not None else 0)
        changed = await self._commit(keys=self._record_keys(session_id, document.id), args=[
            replaced, bytes(document), document.id, document.create_time.timestamp(), document.client_document_id,
            document.ingestion_id, old.ingestion_id if old is not None else "", delta, document.id])
        return bool(changed)

    async def release(self, session_id: str, ingestion_id: str) -> None:
        """Stop tracking a hidden ingestion whose points are gone (deleted, or never written)."""
        await self._redis.hdel(self._hidden(session_id), ingestion_id)

    async def is_hidden(self, session_id: str, ingestion_id: str) -> bool:
        """Whether the ingestion's points are hidden: staged, or replaced and not yet deleted."""
        return bool(await self._redis.hexists(self._hidden(session_id), ingestion_id))

    async def visibility(self, session_id: str) -> tuple[int, list[str]]:
        """The hidden set's epoch and the ingestions searches must leave out, read at one instant."""
        fields = await self._redis.hgetall(self._hidden(session_id))
        epoch, hidden = 0, []
        for key, value in fields.items():
            name = reply_text(key)
            if name == _EPOCH:
                epoch = int(value)
            else:
                hidden.append(name)
        return epoch, hidden

    async def epoch(self, session_id: str) -> int:
        """The hidden set's epoch: bumped by every change that could make a search see other points."""
        return int(await self._redis.hget(self._hidden(session_id), _EPOCH) or 0)

    # -- records -------------------------------------------------------------------------

    async def current(self, session_id: str, document_id: str) -> tuple[Document | None, bytes]:
        """The document's current record, and its stored bytes (what :meth:`commit` compares)."""
        raw = await self._redis.get(self._doc(session_id, document_id))
        if raw is None:
            return None, b""
        assert isinstance(raw, bytes)  # records are protobuf bytes: the client never decodes replies
        return Document.parse(raw), raw

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

    async def delete(self, session_id: str, document_id: str) -> Document:
        """Remove the document's record (NOT_FOUND if there is none), hiding its current version's
        points in the same script; the caller then deletes every point of the document.

        A version committed meanwhile is read again and removed instead, so the record that goes is
        always the one whose size leaves the usage counters.
        """
        while True:
            document, raw = await self.current(session_id, document_id)
            if document is None:
                raise NotFound(f"document {document_id!r} not found", reason="DOCUMENT_NOT_FOUND")
            if await self._delete(keys=self._record_keys(session_id, document_id), args=[
                    raw, document.id, document.client_document_id, document.size_bytes, document.ingestion_id]):
                return document

    async def document_ids(self, session_id: str) -> list[str]:
        return [reply_text(i) for i in await self._redis.zrange(self._docs(session_id), 0, -1)]

    async def purge_session(self, session_id: str) -> None:
        """Remove every document record of a session (its points are removed by the store)."""
        ids = await self.document_ids(session_id)
        keys = [self._doc(session_id, i) for i in ids] + [self._docs(session_id), self._clients(session_id),
                                                           self._usage(session_id), self._ingestions(session_id),
                                                           self.version_key(session_id), self._hidden(session_id)]
        keys += [self._ingestion(i) for i in await self.ingestion_ids(session_id)]
        await self._redis.delete(*keys)

    async def start_ingestion(self, ingestion_id: str, session_id: str, file_name: str) -> None:
        key = self._ingestion(ingestion_id)
        # Not a transaction: the record and the session's set are in two hash slots (two nodes of a
        # cluster). Either alone is harmless: both expire, and the set only lists what to purge.
        async with self._redis.pipeline(transaction=False) as pipe:
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
