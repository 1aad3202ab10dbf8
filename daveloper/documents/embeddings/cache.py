"""A Redis cache of document embeddings, so re-ingesting identical chunks skips the model.

Keys are ``dv:emb:<embedder name>:{<session>}:<sha256 of the text>``: the
embedder's name is part of the key because vectors from different models are
not interchangeable, and the session (of the RPC being served, from its
ContextVar) because vectors are derived from the session's text: each key is
listed in the session's key index as it is written, so it goes with the
session when that is deleted or expires, and one session's cache hits never
reveal what another one ingested. Outside a session (no RPC, an admin call)
the key has no session part.
Values are a small binary record (little-endian)::

    u8 version=1, u8 flags (1 = sparse, 2 = dense)
    [sparse]  u32 n, n x u32 indices, n x f32 values
    [dense]   u32 m, m x f32 values

float32 loses nothing that matters: Qdrant stores vectors as float32 too.
Queries are not cached: they are one text each, rarely repeated, and on the
latency path, where a Redis round trip would be paid on every miss.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daveloper.documents.model import Embedder, SparseVector, Vectors
from daveloper.keys import Keys
from daveloper.rpc.context import current_session_id

__all__ = ["CachedEmbedder", "decode_vectors", "encode_vectors"]

log = logging.getLogger(__name__)

_VERSION = 1
_SPARSE = 1
_DENSE = 2


def encode_vectors(vectors: Vectors) -> bytes:
    """The compact binary record of ``vectors`` (see the module docstring)."""
    flags = (_SPARSE if vectors.sparse is not None else 0) | (_DENSE if vectors.dense is not None else 0)
    parts = [struct.pack("<BB", _VERSION, flags)]
    if vectors.sparse is not None:
        n = len(vectors.sparse.indices)
        parts.append(struct.pack(f"<I{n}I{n}f", n, *vectors.sparse.indices, *vectors.sparse.values))
    if vectors.dense is not None:
        m = len(vectors.dense)
        parts.append(struct.pack(f"<I{m}f", m, *vectors.dense))
    return b"".join(parts)


def decode_vectors(data: bytes) -> Vectors:
    """Inverse of :func:`encode_vectors`; ``ValueError`` for a record it cannot read."""
    try:
        version, flags = struct.unpack_from("<BB", data)
        if version != _VERSION:
            raise ValueError(f"unknown embedding record version {version}")
        offset = 2
        sparse = dense = None
        if flags & _SPARSE:
            (n,) = struct.unpack_from("<I", data, offset)
            indices = struct.unpack_from(f"<{n}I", data, offset + 4)
            values = struct.unpack_from(f"<{n}f", data, offset + 4 + 4 * n)
            sparse = SparseVector(indices=indices, values=values)
            offset += 4 + 8 * n
        if flags & _DENSE:
            (m,) = struct.unpack_from("<I", data, offset)
            dense = struct.unpack_from(f"<{m}f", data, offset + 4)
            offset += 4 + 4 * m
    except struct.error as exc:
        raise ValueError(f"truncated embedding record: {exc}") from exc
    if offset != len(data):
        raise ValueError("trailing bytes in embedding record")
    return Vectors(sparse=sparse, dense=dense)


class CachedEmbedder:
    """Wraps an embedder; document vectors come from Redis when the same text was embedded before.

    The cache is an optimisation, never a dependency: if Redis fails, the
    texts are embedded as if nothing were cached (and a warning is logged).
    """

    def __init__(self, inner: Embedder, redis: aioredis.Redis, *, ttl: int = 7 * 24 * 3600,
                 prefix: str = "dv:") -> None:
        self.inner = inner
        self.name = inner.name
        self.dense_size = inner.dense_size
        self._redis = redis
        self._ttl = ttl
        self._keys = Keys(prefix)

    def key(self, text: str) -> str:
        """The Redis key of ``text``'s vectors, in the current session's part of the cache."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        session = current_session_id()
        return self._keys.embedding(self.name, session, digest) if session else \
            self._keys.embeddings(self.name) + digest

    async def _lookup(self, keys: list[str]) -> list[Vectors | None]:
        try:
            raw = await self._redis.mget(keys)
        except RedisError as exc:
            log.warning("embedding cache unavailable, embedding without it: %s", exc)
            return [None] * len(keys)
        found: list[Vectors | None] = []
        for value in raw:
            try:
                found.append(decode_vectors(value) if isinstance(value, bytes) else None)
            except ValueError:
                found.append(None)  # a record from another version: embed again and overwrite it
        return found

    async def _store(self, items: dict[str, Vectors]) -> None:
        session = current_session_id()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, vectors in items.items():
                    pipe.set(key, encode_vectors(vectors), ex=self._ttl)
                    if session:  # so the session's purge finds it
                        self._keys.index_in(pipe, session, key, self._ttl)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not write the embedding cache: %s", exc)

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        if not texts:
            return []
        keys = [self.key(t) for t in texts]
        results = await self._lookup(keys)
        # Each distinct missing text is embedded once, however often it repeats in the batch.
        missing: dict[str, str] = {}
        for key, text, hit in zip(keys, texts, results, strict=True):
            if hit is None:
                missing.setdefault(key, text)
        if missing:
            fresh = dict(zip(missing, await self.inner.embed_documents(list(missing.values())), strict=True))
            await self._store(fresh)
            results = [hit if hit is not None else fresh[key] for key, hit in zip(keys, results, strict=True)]
        return [hit for hit in results if hit is not None]

    async def embed_query(self, text: str) -> Vectors:
        return await self.inner.embed_query(text)

    async def aclose(self) -> None:
        """Close the inner embedder (the Redis client belongs to the caller)."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
