"""Scraper jobs: durable records, per-session limits, and the life cycle every job shares.

A job's record (the ``Job`` message) lives in Redis under its owner session
(:class:`~daveloper.scraper.job_store.JobStore`); its events go to the event
log scope ``job:<id>``, so any instance can replay and tail them.
:class:`JobRunner` starts a job's work in the background, records QUEUED →
RUNNING → SUCCEEDED / FAILED / CANCELLED with exactly one final ``finished``
event, and lets a cancel from any instance stop it.

Per-session limits (:class:`JobLimits`) are enforced atomically in Redis by
the job store: concurrent jobs through a lease set (:mod:`daveloper.leases`)
and pages per UTC day through a counter.
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
    Unavailable,
    to_failure,
    translated,
)
from daveloper.eventlog import Entry, EventLog
from daveloper.jobs import BackgroundJobs
from daveloper.metrics import Metrics
from daveloper.ownership import WorkLeases
from daveloper.scraper.job_store import LEASE_SECONDS, JobStore
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

__all__ = ["JobLimits", "JobRun", "JobRunner", "job_scope"]

log = logging.getLogger("daveloper.scraper")

#: At most one progress event per this many seconds (the final one is always sent).
PROGRESS_INTERVAL = 0.5
#: How long a job's end is retried while Redis does not answer, before the reaper is left to record it.
END_RETRY_SECONDS = 15.0


def job_scope(job_id: str) -> str:
    return f"job:{job_id}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class JobLimits:
    """Per-session limits on scraper work."""

    concurrent_jobs: int = 2
    pages_per_day: int = 5000


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
