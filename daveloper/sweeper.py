"""The sweeper: removes every trace of sessions that expired (hard expiry or idle deadline).

A session's record expires by itself in Redis; its data does not. The
sweeper walks the session index (``dv:sessions:expiry``, see
:mod:`daveloper.sessions`) for deadlines that have passed and, for each such
session, runs the same purgers ``DeleteSession`` runs (conversations,
documents, vectors, scraper jobs), then deletes every remaining key whose name
carries the session id (rate-limit buckets, tool caches, crawl records, ...),
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
from daveloper.sessions import SessionStore

__all__ = ["Sweeper", "purge_named_keys"]

log = logging.getLogger("daveloper.sweeper")

Purger = Callable[[str], Awaitable[object]]

# KEYS: index, record. ARGV: now, claim until, session id. 1 if this caller now owns the sweep.
# A record that still exists is left alone: Redis's clock, not ours, says whether it has expired,
# so a sweeper whose clock runs ahead cannot purge a session that is still being used.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3])
return 1
"""


async def purge_named_keys(redis: aioredis.Redis, session_ids: Iterable[str], *, prefix: str = "dv:") -> int:
    """Delete every ``prefix`` key that has one of ``session_ids`` as a ``:``-separated part; the count.

    A backstop behind the owners' purgers, for key families that no purger
    knows (rate-limit buckets, caches): one SCAN of the keyspace for any number
    of sessions, so the sweeper runs it once per pass. Session ids are
    URL-safe base64 (no ``:``), so a part matches an id exactly or not at all.
    """
    wanted = set(session_ids)
    if not wanted:
        return 0
    doomed: list[bytes | str] = []
    deleted = 0
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        if not wanted.isdisjoint(reply_text(key).split(":")):
            doomed.append(key)
        if len(doomed) >= 500:
            deleted += await redis.unlink(*doomed)
            doomed.clear()
    if doomed:
        deleted += await redis.unlink(*doomed)
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
        keys = [self._sessions.index_key, self._sessions.record_key(session_id)]
        return bool(await self._claim(keys=keys, args=[repr(now), repr(now + self._claim_seconds), session_id]))

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
