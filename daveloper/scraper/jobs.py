"""Scraper jobs: durable records, per-session limits, and the life cycle every job shares.

A job's record (the ``Job`` message) lives in Redis under its owner session;
its events go to the event log scope ``job:<id>``, so any instance can replay
and tail them. :class:`JobRunner` starts a job's work in the background,
records QUEUED → RUNNING → SUCCEEDED / FAILED / CANCELLED with exactly one
final ``finished`` event, and lets a cancel from any instance stop it.

Per-session limits are enforced atomically in Redis: concurrent jobs through
a lease set (:mod:`daveloper.leases`) and
pages per UTC day through a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from daveloper.agent.retry import retry_unavailable
from daveloper.errors import (
    Cancelled,
    DaveloperError,
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
    to_failure,
    translated,
)
from daveloper.eventlog import Entry, EventLog
from daveloper.infra.redis import reply_text
from daveloper.jobs import BackgroundJobs
from daveloper.keys import Keys
from daveloper.leases import LeaseSet
from daveloper.metrics import Metrics
from daveloper.ownership import WorkLeases
from daveloper.paging import next_page_token, page_offset
from generated.daveloper.v1 import (
    Failure,
    Job,
    JobEvent,
    JobFinished,
    JobProgress,
    JobQueued,
    JobState,
    JobStats,
    LogLine,
    PageFailed,
    PageFetched,
    PageSkipped,
)

__all__ = ["JobLimits", "JobRun", "JobRunner", "JobStore", "job_scope"]

log = logging.getLogger("daveloper.scraper")

#: A running job refreshes its concurrency lease this often; a dead instance's lease lapses after three periods.
LEASE_SECONDS = 30.0
#: At most one progress event per this many seconds (the final one is always sent).
PROGRESS_INTERVAL = 0.5
#: How long a job's end is retried while Redis does not answer, before the reaper is left to record it.
END_RETRY_SECONDS = 15.0

# KEYS[1] day counter; ARGV: pages, limit, ttl. Takes the pages only if they fit.
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return used
"""


def job_scope(job_id: str) -> str:
    return f"job:{job_id}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _seconds_to_midnight() -> int:
    now = time.time()
    return int(86400 - now % 86400) + 1


@dataclass(frozen=True, slots=True)
class JobLimits:
    """Per-session limits on scraper work."""

    concurrent_jobs: int = 2
    pages_per_day: int = 5000


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


class JobRun:
    """A running job as its work sees it: counters, and methods that append its events."""

    def __init__(self, job: Job, session_id: str, events: EventLog, store: JobStore, limits: JobLimits,
                 metrics: Metrics | None = None) -> None:
        self.job = job
        self._pages = (metrics if metrics is not None else Metrics()).scrape_pages
        self.session_id = session_id
        self.stats = JobStats()
        self._events = events
        self._store = store
        self._limits = limits
        self._progress_at = 0.0
        #: Events appended so far (what the no-progress watch looks at).
        self.appends = 0

    @property
    def scope(self) -> str:
        return job_scope(self.job.id)

    async def emit(self, *, final: bool = False, **kind: Any) -> int:
        event = JobEvent(job_id=self.job.id, create_time=_now(), **kind)
        self.appends += 1
        return await self._events.append(self.scope, bytes(event), final=final)

    async def log(self, message: str, level: str = "INFO") -> None:
        """A log line in the job's events, and in the live logs (``LogsService.Tail``)."""
        log.log(logging.getLevelName(level), message, extra={"job_id": self.job.id, "session_id": self.session_id})
        await self.emit(log=LogLine(level=level, message=message))

    async def take_page(self) -> None:
        await self._store.take_page(self.session_id, self._limits.pages_per_day)

    async def fetched(self, event: PageFetched) -> None:
        self._pages.labels("fetched").inc()
        self.stats.pages_fetched += 1
        self.stats.bytes_fetched += event.size_bytes
        if event.document_id:
            self.stats.documents_ingested += 1
        await self.emit(page_fetched=event)
        await self.progress()

    async def skipped(self, url: str, reason: str) -> None:
        self._pages.labels("skipped").inc()
        self.stats.pages_skipped += 1
        await self.emit(page_skipped=PageSkipped(url=url, reason=reason))
        await self.progress()

    async def failed(self, url: str, error: BaseException, http_status: int = 0) -> None:
        self._pages.labels("failed").inc()
        self.stats.pages_failed += 1
        await self.emit(page_failed=PageFailed(url=url, failure=to_failure(error), http_status=http_status))
        await self.progress()

    async def progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._progress_at >= PROGRESS_INTERVAL:
            self._progress_at = now
            await self.emit(progress=JobProgress(stats=JobStats.parse(bytes(self.stats))))


Work = Callable[[JobRun], Coroutine[Any, Any, None]]


def _failure_of(exc: BaseException) -> BaseException:
    """``exc`` as one of our errors; a group (a crawl's pages fail together) as its first error if all are ours."""
    if isinstance(exc, BaseExceptionGroup):
        errors = [_failure_of(inner) for inner in exc.exceptions]
        return errors[0] if all(isinstance(error, DaveloperError) for error in errors) else exc
    return translated(exc)


class JobRunner:
    """Starts jobs and owns their life cycle."""

    def __init__(self, *, events: EventLog, store: JobStore, jobs: BackgroundJobs, limits: JobLimits,
                 work: WorkLeases | None = None, metrics: Metrics | None = None) -> None:
        self._events = events
        self._metrics = metrics
        #: Leases on running jobs, so another instance fails them if this one dies.
        self._work = work
        self._store = store
        self._jobs = jobs
        self.limits = limits

    async def start(self, session_id: str, job: Job, work: Work) -> Job:
        """Record ``job`` as queued and run ``work`` in the background; returns the recorded job."""
        job.id = job.id or "job_" + secrets.token_hex(12)
        job.state = JobState.QUEUED
        job.create_time = job.update_time = _now()
        job.stats = JobStats()
        await self._store.acquire(session_id, job.id, self.limits.concurrent_jobs)
        run = JobRun(job, session_id, self._events, self._store, self.limits, self._metrics)
        try:
            await self._store.save(session_id, job)
            job.last_seq = await run.emit(queued=JobQueued(job=job))
            if self._work is not None:
                await self._work.claim("job", job.id, session=session_id)
            self._jobs.spawn(self._run(run, work), name=f"job {job.id}")
        except BaseException:
            await self._store.release(session_id, job.id)
            raise
        return job

    def entries(self, job_id: str, after_seq: int = 0) -> AsyncGenerator[Entry, None]:
        """Replay then tail a job's stored events as the log holds them (serialized, seq beside)."""
        return self._events.read(job_scope(job_id), after_seq)

    async def events(self, job_id: str, after_seq: int = 0) -> AsyncIterator[JobEvent]:
        """Replay then tail a job's events, each with its seq; ends after ``finished``."""
        async for entry in self._events.read(job_scope(job_id), after_seq):
            event = JobEvent.parse(entry.payload)
            event.seq = entry.seq
            yield event

    async def get(self, session_id: str, job_id: str) -> Job:
        job = await self._store.get(session_id, job_id)
        job.last_seq = await self._events.last_seq(job_scope(job_id))
        return job

    async def page(self, session_id: str, *, page_size: int, page_token: str) -> tuple[list[Job], str]:
        return await self._store.page(session_id, page_size=page_size, page_token=page_token)

    async def cancel(self, session_id: str, job_id: str) -> bool:
        await self._store.get(session_id, job_id)  # NOT_FOUND for other sessions' jobs
        return await self._events.request_cancel(job_scope(job_id))

    async def _run(self, run: JobRun, work: Work) -> None:
        job = run.job
        failure: Failure | None = None
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            job.state = JobState.RUNNING
            await self._save(run)
            await self._events.run_cancellable(run.scope, self._watched(run, work))
            state = JobState.SUCCEEDED
        except asyncio.CancelledError:
            interrupted = Unavailable("the server shut down while the job ran", reason="INTERRUPTED", retry_after=0)
            await asyncio.shield(self._end(run, JobState.FAILED, to_failure(interrupted)))
            raise
        except Cancelled:
            state = JobState.CANCELLED
        except DaveloperError as exc:
            state, failure = JobState.FAILED, to_failure(exc)
        except Exception as exc:
            error = _failure_of(exc)  # e.g. Redis unreachable: UNAVAILABLE, not a fault of ours
            if not isinstance(error, DaveloperError):
                log.error("job failed", exc_info=exc, extra={"job_id": job.id})
                error = Internal("the job failed unexpectedly")
            state, failure = JobState.FAILED, to_failure(error)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self._end(run, state, failure)

    async def _end(self, run: JobRun, state: JobState, failure: Failure | None) -> None:
        """Record the job's end from its own task: retried while Redis restarts, else left to the reaper.

        An end that cannot be written must not leave the job running for ever: its work lease is no
        longer renewed, so it lapses and the reaper (here or elsewhere) writes the end once Redis
        answers (:meth:`fail_orphan`).
        """
        try:
            await retry_unavailable(lambda: self._finish(run, state, failure), seconds=END_RETRY_SECONDS,
                                    what="job end")
        except (DaveloperError, aioredis.RedisError) as exc:
            log.warning("a job's end could not be recorded; its lease lapses and the reaper records it: %s", exc,
                        extra={"job_id": run.job.id})
            if self._work is not None:
                self._work.disown("job", run.job.id)

    async def _watched(self, run: JobRun, work: Work) -> None:
        """``work``, stopped (``NO_PROGRESS``) if it appends no event for the leases' ``stall_seconds``."""
        if self._work is None:
            await work(run)
            return
        async with self._work.watch("job", run.job.id, lambda: run.appends):
            await work(run)

    async def _finish(self, run: JobRun, state: JobState, failure: Failure | None) -> None:
        """Save the job's end and append its final event (once: a retry finds the log finished), then free it."""
        run.job.state = state
        run.job.failure = failure
        await self._save(run)
        try:
            await run.emit(final=True, finished=JobFinished(state=state, stats=run.stats, failure=failure))
        except FailedPrecondition as exc:
            if exc.reason != "EVENT_LOG_FINISHED":
                raise  # else an earlier try appended it and lost the reply
        # The session's slot lapses by itself if this fails; the work lease is then found ended.
        with contextlib.suppress(DaveloperError, aioredis.RedisError):
            await self._store.release(run.session_id, run.job.id)
        if self._work is not None:
            await self._work.release("job", run.job.id)
        log.info("job finished", extra={"job_id": run.job.id, "state": state.name,
                                        "pages": run.stats.pages_fetched})

    async def fail_orphan(self, fields: Mapping[str, str]) -> None:
        """Fail a job whose instance stopped (its lease lapsed); its pages so far stay ingested."""
        session_id, job_id = fields["session"], fields["id"]
        try:
            job = await self._store.get(session_id, job_id)
        except NotFound:
            return  # the session was deleted meanwhile
        if await self._events.finished(job_scope(job_id)):
            await self._store.release(session_id, job_id)
            return
        run = JobRun(job, session_id, self._events, self._store, self.limits, self._metrics)
        run.stats = job.stats or JobStats()
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            lost = Unavailable("the server running this job stopped; start it again", reason="OWNER_LOST",
                               retry_after=0, metadata={"owner": fields.get("owner", "")})
            await self._finish(run, JobState.FAILED, to_failure(lost))
        else:  # its end was saved, but its final event not written (Redis went away in between)
            await self._finish(run, job.state, job.failure)

    async def _save(self, run: JobRun) -> None:
        run.job.update_time = _now()
        run.job.stats = run.stats
        await self._store.save(run.session_id, run.job)

    async def _heartbeat(self, run: JobRun) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS)
            try:
                await self._store.renew(run.session_id, run.job.id)
                await self._save(run)
            except (DaveloperError, aioredis.RedisError) as exc:  # the next beat may succeed
                log.warning("job heartbeat failed: %s", exc, extra={"job_id": run.job.id})
