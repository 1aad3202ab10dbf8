"""GitHub answers cached with their ETags in Redis, so repeated reads are conditional and cost no rate limit.

The cache is an optimisation, never a dependency (like the embedding cache):
when Redis fails, requests go out unconditionally and a warning is logged.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from yarl import URL

__all__ = ["ETagCache"]

log = logging.getLogger("daveloper.scraper.github")

_CACHE_TTL = 24 * 3600
_MAX_CACHED_BODY = 4 * 1024 * 1024  # bigger answers (huge trees, raw files) are not worth the Redis memory


class ETagCache:
    """Bodies, ETags and Link headers of GitHub answers, by URL, accept type and token."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, token: str | None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._token = token

    def key(self, url: URL, accept: str) -> str:
        # The token is hashed in, never stored: GitHub's answers vary with it (private repositories).
        material = "\n".join((accept, str(url), self._token or ""))
        return self._prefix + hashlib.sha256(material.encode()).hexdigest()

    async def get(self, key: str) -> tuple[str, bytes, str] | None:
        try:
            etag, body, link = await self._redis.hmget(key, ["etag", "body", "link"])
        except RedisError as exc:
            log.warning("GitHub ETag cache unavailable: %s", exc)
            return None
        if not isinstance(etag, bytes) or not isinstance(body, bytes):
            return None
        return etag.decode(), body, link.decode() if isinstance(link, bytes) else ""

    async def put(self, key: str, etag: str, body: bytes, link: str) -> None:
        if len(body) > _MAX_CACHED_BODY:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"etag": etag, "body": body, "link": link})
                pipe.expire(key, _CACHE_TTL)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not write the GitHub ETag cache: %s", exc)

    async def refresh(self, key: str) -> None:
        try:
            await self._redis.expire(key, _CACHE_TTL)
        except RedisError as exc:
            log.warning("could not refresh the GitHub ETag cache: %s", exc)
