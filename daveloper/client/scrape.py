"""``daveloper scrape URL``: a crawl job, its pages and counts shown live.

``ScraperService/Scrape`` starts the job and streams its events: each page
fetched, skipped or failed is a line on stderr, the counts are a status line
redrawn on a terminal, and a summary goes to stdout at the end. Ctrl-C sends
``CancelJob`` and waits for the job to finish as cancelled; a second Ctrl-C quits.
A crawl refused at admission (the scrape rate: ``RetryInfo``) is asked again after
the delay the server gives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.client.connection import CALL_TIMEOUT, CommandFailed, Connection, describe_failure, translate_errors
from daveloper.client.retry import MayRetry, retrying
from daveloper.client.terminal import Interrupts, Terminal, human_bytes
from generated.daveloper.v1 import (
    CancelJobRequest,
    JobEvent,
    JobFinished,
    JobState,
    JobStats,
    ScrapeRequest,
    ScraperServiceStub,
    ScrapeSpec,
)

__all__ = ["ScrapeOptions", "scrape"]

_EXIT_CANCELLED = 130


@dataclass(frozen=True, slots=True)
class ScrapeOptions:
    """What to crawl, from the command line."""

    url: str
    depth: int = 1
    #: 0: the server's default.
    max_pages: int = 0
    ingest: bool = True
    same_site: bool = False

    def spec(self) -> ScrapeSpec:
        return ScrapeSpec(urls=[self.url], max_depth=self.depth, max_pages=self.max_pages,
                          same_site_only=self.same_site, ingest=self.ingest)


def _counts(stats: JobStats | None) -> str:
    stats = stats or JobStats()
    text = f"fetched {stats.pages_fetched}, skipped {stats.pages_skipped}, failed {stats.pages_failed}"
    if stats.documents_ingested:
        text += f", ingested {stats.documents_ingested}"
    return text


class _JobView:
    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.job_id = ""
        self.finished: JobFinished | None = None

    def show(self, event: JobEvent) -> None:
        terminal = self.terminal
        self.job_id = self.job_id or event.job_id
        if event.queued is not None:
            terminal.note(f"job {event.job_id} queued", dim=True)
        elif (page := event.page_fetched) is not None:
            title = f" {page.title!r}" if page.title else ""
            terminal.note(f"fetched {page.http_status} {page.url}{title} ({human_bytes(page.size_bytes)})")
        elif (skipped := event.page_skipped) is not None:
            terminal.note(f"skipped {skipped.url} ({skipped.reason})", dim=True)
        elif (failed := event.page_failed) is not None:
            reason = describe_failure(failed.failure) if failed.failure is not None else f"HTTP {failed.http_status}"
            terminal.note(f"failed  {failed.url}: {reason}")
        elif event.log is not None:
            terminal.note(f"{event.log.level.lower()}: {event.log.message}", dim=True)
        elif event.progress is not None:
            terminal.status(_counts(event.progress.stats))
        elif event.finished is not None:
            self.finished = event.finished


async def scrape(connection: Connection, terminal: Terminal, interrupts: Interrupts, options: ScrapeOptions) -> int:
    """Run one crawl; 0 when it succeeded, 130 when cancelled, 1 otherwise."""
    stub = ScraperServiceStub(connection.channel)
    view = _JobView(terminal)
    cancels: set[asyncio.Task[None]] = set()

    async def cancel(job_id: str) -> None:
        with translate_errors(connection.options.server, "cancel"):
            await stub.cancel_job(CancelJobRequest(job_id=job_id), timeout=CALL_TIMEOUT,
                                  metadata=connection.metadata)

    def interrupt() -> None:
        if cancels or not view.job_id:
            interrupts.quit()  # a second Ctrl-C, or nothing to cancel yet
            return
        terminal.note("^C cancelling the job (Ctrl-C again to quit)", dim=True)
        cancels.add(asyncio.create_task(cancel(view.job_id)))

    async def run() -> None:
        seen = False
        try:
            with interrupts.handling(interrupt), translate_errors(connection.options.server, "scrape"):
                async for response in stub.scrape(ScrapeRequest(spec=options.spec()), timeout=connection.timeout,
                                                  metadata=connection.metadata):
                    seen = True
                    if response.event is not None:
                        view.show(response.event)
        except CommandFailed as exc:
            # A request has no idempotency key: only a refusal at admission (RESOURCE_EXHAUSTED before
            # any event, no job created) is safe to resend; an UNAVAILABLE call may have queued a job.
            if seen or not isinstance(exc.__cause__, GRPCError) \
                    or exc.__cause__.status is not Status.RESOURCE_EXHAUSTED:
                exc.final()
            raise

    def waiting(exc: MayRetry, seconds: float) -> None:
        terminal.note(f"{exc}; retrying in {seconds:.1f}s", dim=True)

    try:
        await retrying(run, connection.retry, waiting)
    finally:
        terminal.clear_status()
        for task in cancels:  # owned here: awaited, so a failed cancel is reported
            await task
    finished = view.finished
    if finished is None:
        raise CommandFailed("scrape failed: the stream ended before the job did")
    state = JobState(finished.state)
    terminal.line(f"job {view.job_id} {state.name.lower()}: {_counts(finished.stats)}")
    if state is JobState.SUCCEEDED:
        return 0
    if state is JobState.CANCELLED:
        return _EXIT_CANCELLED
    if finished.failure is not None:
        terminal.note(f"daveloper: the job failed: {describe_failure(finished.failure)}")
    return 1
