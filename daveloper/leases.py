"""Counted leases in Redis: "at most N of these at once per session", across instances.

A lease set is a sorted set of members scored by their expiry. Taking a lease
drops lapsed members and adds one only if fewer than the limit remain — in one
Lua script, so concurrent takers on any instance never exceed the limit. An
owner renews its lease while it works and releases it when done; the lease of
an instance that died lapses on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from daveloper.infra.batching import CommandBatcher
from daveloper.keys import Keys

__all__ = ["LeaseSet"]

# KEYS[1] the set; ARGV: now, expiry, member, limit. 1 if the member holds a lease afterwards.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[2] - ARGV[1]) + 1)
  return 1
end
return 0
"""


class LeaseSet:
    """Leases of one kind (``jobs``, ``turns``), one set per session."""

    def __init__(self, redis: aioredis.Redis, kind: str, *, ttl_seconds: float, prefix: str = "dv:") -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._keys, self._kind = Keys(prefix), kind
        self.ttl_seconds = ttl_seconds

    def key(self, session_id: str) -> str:
        return self._keys.leases(self._kind, session_id)

    async def acquire(self, session_id: str, member: str, limit: int) -> bool:
        now = time.time()
        return bool(await self._acquire(keys=[self.key(session_id)], args=[now, now + self.ttl_seconds, member, limit]))

    def acquire_command(self, session_id: str, member: str, limit: int) -> tuple[Any, ...]:
        """:meth:`acquire` as a command, to send with others; its reply is 1 if the member holds a lease afterwards.

        EVAL rather than EVALSHA: a pipeline holding a registered script first asks
        ``SCRIPT EXISTS``, one more round trip; Redis caches the compiled script either way.
        """
        now = time.time()
        return "EVAL", _ACQUIRE, 1, self.key(session_id), now, now + self.ttl_seconds, member, limit

    async def renew(self, session_id: str, member: str) -> None:
        await self._redis.zadd(self.key(session_id), {member: time.time() + self.ttl_seconds}, xx=True)

    def release_queued(self, batch: CommandBatcher, session_id: str, member: str) -> asyncio.Future[Any]:
        """Queue :meth:`release` on ``batch`` now: it goes out before what is queued there after it."""
        return batch.queue("ZREM", self.key(session_id), member)

    async def release(self, session_id: str, member: str) -> None:
        await self._redis.zrem(self.key(session_id), member)

    async def count(self, session_id: str) -> int:
        """Leases held now (lapsed ones not counted)."""
        return int(await self._redis.zcount(self.key(session_id), time.time(), "+inf"))

    async def purge(self, session_id: str) -> None:
        await self._redis.delete(self.key(session_id))
