"""``daveloper.v1.ScraperService``: crawl and GitHub jobs with live, resumable progress."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from daveloper.errors import FailedPrecondition
from daveloper.rpc import Authenticator, Call, Servicer
from daveloper.rpc.encoded import Encoded, wrap_event
from daveloper.scraper.crawl import Crawler
from daveloper.scraper.github_ingest import GitHubIngest
from daveloper.scraper.jobs import JobRunner
from daveloper.servicers.heartbeat import Heartbeats, heartbeat
from generated.daveloper.v1 import (
    CancelJobRequest,
    CancelJobResponse,
    GetJobRequest,
    GetJobResponse,
    Job,
    JobKind,
    ListJobsRequest,
    ListJobsResponse,
    ScrapeRequest,
    ScraperServiceBase,
    ScrapeSpec,
    StartGitHubIngestRequest,
    StartGitHubIngestResponse,
    StartScrapeRequest,
    StartScrapeResponse,
    WatchJobRequest,
    WatchJobResponse,
)

__all__ = ["ScraperService"]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


class ScraperService(Servicer):
    base = ScraperServiceBase

    def __init__(self, *, auth: Authenticator, runner: JobRunner, crawler: Crawler,
                 github: GitHubIngest | None, heartbeat_seconds: float = 15.0) -> None:
        super().__init__(auth=auth)
        self._heartbeat_seconds = heartbeat_seconds
        self._runner = runner
        self._crawler = crawler
        self._github = github

    async def _start_scrape(self, request: StartScrapeRequest | ScrapeRequest, call: Call[Any, Any]) -> Job:
        spec = request.spec or ScrapeSpec()
        await self._crawler.check_seeds(spec, call.session_id)
        work = self._crawler.work(spec)
        return await self._runner.start(call.session_id, Job(kind=JobKind.SCRAPE, scrape=spec), work)

    async def StartScrape(self, request: StartScrapeRequest, call: Call[Any, Any]) -> StartScrapeResponse:
        return StartScrapeResponse(job=await self._start_scrape(request, call))

    async def Scrape(self, request: ScrapeRequest, call: Call[Any, Any]) -> AsyncIterator[Encoded]:
        job = await self._start_scrape(request, call)
        async with contextlib.aclosing(self._runner.entries(job.id)) as entries:
            async for entry in entries:
                yield wrap_event(entry.payload, entry.seq)  # a ScrapeResponse, from the stored bytes

    async def StartGitHubIngest(
        self, request: StartGitHubIngestRequest, call: Call[Any, Any]
    ) -> StartGitHubIngestResponse:
        if self._github is None:
            raise FailedPrecondition("GitHub ingestion is disabled on this server", reason="GITHUB_DISABLED")
        spec = self._github.plan(request.spec)
        job = Job(kind=JobKind.GITHUB_INGEST, github=spec)
        return StartGitHubIngestResponse(job=await self._runner.start(call.session_id, job, self._github.work(spec)))

    async def WatchJob(self, request: WatchJobRequest, call: Call[Any, Any]) -> None:
        await self._runner.get(call.session_id, request.job_id)
        delivered = request.after_seq
        async with Heartbeats(call, self._heartbeat_seconds,
                              lambda: WatchJobResponse(heartbeat=heartbeat(delivered))) as out, \
                contextlib.aclosing(self._runner.entries(request.job_id, request.after_seq)) as entries:
            async for entry in entries:
                await out.send(wrap_event(entry.payload, entry.seq))  # a WatchJobResponse, from the stored bytes
                delivered = entry.seq

    async def CancelJob(self, request: CancelJobRequest, call: Call[Any, Any]) -> CancelJobResponse:
        return CancelJobResponse(cancelled=await self._runner.cancel(call.session_id, request.job_id))

    async def GetJob(self, request: GetJobRequest, call: Call[Any, Any]) -> GetJobResponse:
        return GetJobResponse(job=await self._runner.get(call.session_id, request.job_id))

    async def ListJobs(self, request: ListJobsRequest, call: Call[Any, Any]) -> ListJobsResponse:
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        jobs, token = await self._runner.page(call.session_id, page_size=size, page_token=request.page_token)
        return ListJobsResponse(jobs=jobs, next_page_token=token)
