"""The sweeper: removes every trace of sessions that expired (hard expiry or idle deadline).

A session's record expires by itself in Redis; its data does not. The
sweeper walks the session index (``dv:sessions:expiry``, see
:mod:`daveloper.sessions`) for deadlines that have passed and, for each such
session, runs the same purgers ``DeleteSession`` runs (conversations,
documents, vectors, scraper jobs), then deletes every remaining key of the
session that the key schema names or the session's key index lists (rate-limit
buckets, leases, tool caches, crawl records, ...; see :mod:`daveloper.keys`),
and finally the record and the index entry.

Every instance may run a sweeper. A session is *claimed* before it is purged:
one Lua script checks that its deadline has passed and its record is gone, and
moves its score ``claim_seconds`` into the future, so exactly one instance
sweeps it. If that instance dies mid-sweep the claim lapses and another
instance sweeps the session again (every purger is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import redis.asyncio as aioredis

from daveloper.audit import AuditLog
from daveloper.errors import DaveloperError
from daveloper.infra.redis import reply_text
from daveloper.keys import Keys
from daveloper.sessions import SessionStore

__all__ = ["Sweeper", "purge_named_keys"]

log = logging.getLogger("daveloper.sweeper")

Purger = Callable[[str], Awaitable[object]]

# KEYS: index. ARGV: now, claim until, session id. 1 if this caller now owns the sweep.
# The caller has checked that the record is gone first (Redis's clock, not ours, says whether it
# has expired, so a sweeper whose clock runs ahead cannot purge a session still in use). Not in this
# script: the record is in the session's hash slot, the index in its own (two nodes of a cluster);
# a record that is gone never comes back, so checking it first is as good.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3])
return 1
"""


async def purge_named_keys(redis: aioredis.Redis, session_ids: Iterable[str], *, prefix: str = "dv:") -> int:
    """Delete every key of ``session_ids`` that the schema names or the session's index lists; the count.

    A backstop behind the owners' purgers, for key families that no purger
    knows (rate-limit buckets, leases, caches, crawl records): the names come
    from :mod:`daveloper.keys` (those known by name, and the session's index of
    its digest-named keys), never from a scan of the keyspace. They all carry
    the session's hash tag, so each session's are one UNLINK on one node.
    """
    keys = Keys(prefix)
    deleted = 0
    for session_id in session_ids:
        listed = [reply_text(k) for k in await redis.smembers(keys.session_index(session_id))]
        deleted += await redis.unlink(*listed, *keys.session_fixed(session_id))
    return deleted


class Sweeper:
    """Finds expired sessions and removes all their data (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        sessions: SessionStore,
        purgers: Sequence[Purger],
        interval: float,
        *,
        audit: AuditLog | None = None,
        batch: int = 200,
        claim_seconds: float = 600.0,
        prefix: str = "dv:",
    ) -> None:
        self._redis = redis
        self._sessions = sessions
        self._purgers = list(purgers)
        self.interval = interval
        self._audit = audit
        self._batch = batch
        self._claim_seconds = claim_seconds
        self._prefix = prefix
        self._claim = redis.register_script(_CLAIM)

    async def _claim_session(self, session_id: str, now: float) -> bool:
        if await self._redis.exists(self._sessions.record_key(session_id)):
            return False
        return bool(await self._claim(keys=[self._sessions.index_key],
                                      args=[repr(now), repr(now + self._claim_seconds), session_id]))

    async def _purge(self, session_id: str) -> bool:
        try:
            for purge in self._purgers:
                await purge(session_id)
        except (DaveloperError, aioredis.RedisError) as exc:
            # The claim lapses and a later pass (here or on another instance) retries the session.
            log.warning("sweeping a session failed: %s", exc)
            return False
        return True

    async def sweep_once(self) -> int:
        """Sweep up to ``batch`` sessions whose deadline has passed; the number swept."""
        now = time.time()
        due = [reply_text(m) for m in await self._redis.zrangebyscore(
            self._sessions.index_key, "-inf", now, start=0, num=self._batch)]
        claimed = [session_id for session_id in due if await self._claim_session(session_id, now)]
        swept = [session_id for session_id in claimed if await self._purge(session_id)]
        if not swept:
            return 0
        await purge_named_keys(self._redis, swept, prefix=self._prefix)
        for session_id in swept:
            # Record (already expired) and index entry last: until then a failed pass is retried.
            await self._sessions.delete(session_id)
            if self._audit is not None:
                await self._audit.record("session.swept", session_id=session_id)
        log.info("swept expired sessions", extra={"sessions": len(swept)})
        return len(swept)

    async def run(self) -> None:
        """Sweep every ``interval`` seconds (with jitter, so instances spread out) until cancelled."""
        task = asyncio.current_task()
        while True:
            try:
                while await self.sweep_once() >= self._batch:
                    pass  # a full batch: more may be due
            except Exception:
                # The loop's owner boundary: one failed pass must not stop sweeping (or the app
                # whose TaskGroup runs us). CancelledError is not an Exception and ends the loop.
                log.exception("sweep failed")
            if task is not None and task.cancelling():  # a cancel redis-py swallowed on Python 3.11
                raise asyncio.CancelledError
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.25))
