"""Scraper job records in Redis, and the Redis side of per-session limits.

A job's record (the ``Job`` message) is a hash under the job's id, and its
owner session lists its jobs in a sorted set by creation time. The limits are
taken atomically: concurrent jobs through a lease set (:mod:`daveloper.leases`)
and pages per UTC day through a counter that a script raises only if the page
still fits.
"""

from __future__ import annotations

import datetime
import time

import redis.asyncio as aioredis

from daveloper.errors import NotFound, ResourceExhausted
from daveloper.infra.redis import reply_text
from daveloper.keys import Keys
from daveloper.leases import LeaseSet
from daveloper.paging import next_page_token, page_offset
from generated.daveloper.v1 import Job

__all__ = ["LEASE_SECONDS", "JobStore"]

#: A running job refreshes its concurrency lease this often; a dead instance's lease lapses after three periods.
LEASE_SECONDS = 30.0

# KEYS[1] day counter; ARGV: pages, limit, ttl. Takes the pages only if they fit.
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return used
"""


def _seconds_to_midnight() -> int:
    now = time.time()
    return int(86400 - now % 86400) + 1


class JobStore:
    """Job records by session, and the Redis side of per-session limits."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "dv:", ttl_seconds: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._keys = Keys(prefix)
        self._ttl = ttl_seconds
        self._take = redis.register_script(_TAKE)
        self.leases = LeaseSet(redis, "jobs", ttl_seconds=3 * LEASE_SECONDS, prefix=prefix)

    def _job(self, job_id: str) -> str:
        return self._keys.job(job_id)

    def _jobs(self, session_id: str) -> str:
        return self._keys.jobs(session_id)

    def _pages(self, session_id: str) -> str:
        return self._keys.scrape_pages(session_id, f"{datetime.datetime.now(datetime.UTC):%Y%m%d}")

    def pages_key(self, session_id: str) -> str:
        """The counter of the session's pages fetched today (a Redis string; absent is 0)."""
        return self._pages(session_id)

    async def save(self, session_id: str, job: Job) -> None:
        assert job.create_time is not None
        # Not a transaction: the record and the session's list are in two hash slots (two nodes of a
        # cluster). The record alone is unlisted until it expires; the list alone names a missing job.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._job(job.id), mapping={"session": session_id, "job": bytes(job)})
            pipe.expire(self._job(job.id), self._ttl)
            pipe.zadd(self._jobs(session_id), {job.id: job.create_time.timestamp()})
            pipe.expire(self._jobs(session_id), self._ttl)
            await pipe.execute()

    async def get(self, session_id: str, job_id: str) -> Job:
        """The job, or NOT_FOUND — also when it belongs to another session."""
        owner, raw = await self._redis.hmget(self._job(job_id), ["session", "job"]) if job_id else (None, None)
        if owner is None or raw is None or reply_text(owner) != session_id:
            raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")
        return Job.parse(raw)

    async def page(self, session_id: str, *, page_size: int, page_token: str) -> tuple[list[Job], str]:
        """Newest first."""
        offset = page_offset(page_token)
        ids = await self._redis.zrevrange(self._jobs(session_id), offset, offset + page_size)
        more = len(ids) > page_size
        jobs = []
        for job_id in ids[:page_size]:
            if (raw := await self._redis.hget(self._job(reply_text(job_id)), "job")) is not None:
                jobs.append(Job.parse(raw))
        return jobs, next_page_token(offset + page_size, more=more)

    async def job_ids(self, session_id: str) -> list[str]:
        return [reply_text(i) for i in await self._redis.zrange(self._jobs(session_id), 0, -1)]

    async def purge_session(self, session_id: str) -> None:
        ids = await self.job_ids(session_id)
        await self._redis.delete(*[self._job(i) for i in ids], self._jobs(session_id), self.leases.key(session_id))

    async def acquire(self, session_id: str, job_id: str, limit: int) -> None:
        """Take one of the session's concurrent-job slots, or RESOURCE_EXHAUSTED."""
        if not await self.leases.acquire(session_id, job_id, limit):
            raise ResourceExhausted(f"this session already runs {limit} scraper jobs; wait for one to finish",
                                    reason="CONCURRENT_JOBS", retry_after=LEASE_SECONDS,
                                    metadata={"limit": str(limit)})

    async def renew(self, session_id: str, job_id: str) -> None:
        await self.leases.renew(session_id, job_id)

    async def release(self, session_id: str, job_id: str) -> None:
        await self.leases.release(session_id, job_id)

    async def pages_today(self, session_id: str) -> int:
        return int(await self._redis.get(self._pages(session_id)) or 0)

    async def take_page(self, session_id: str, limit: int) -> None:
        """Count one page against the session's daily quota, or RESOURCE_EXHAUSTED."""
        if await self._take(keys=[self._pages(session_id)], args=[1, limit, 2 * 86400]) < 0:
            raise ResourceExhausted(f"this session fetched its {limit} pages for today", reason="PAGES_PER_DAY",
                                    retry_after=_seconds_to_midnight(), metadata={"limit": str(limit)})
