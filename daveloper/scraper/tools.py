"""The agent's web tools, on the same jobs that ``ScraperService`` runs.

``scrape_url`` runs a one-page crawl job that ingests the page; ``github_repo``
runs a GitHub ingestion job for the repository's README. Both wait for their
job, then hand the turn the first passages of what was ingested (of the
document's current version, as searches see it), so the answer can cite the
page or the README. The jobs are ordinary jobs — listed by
``ListJobs``, counted against the session's limits — and a turn that is
cancelled cancels its job. A page the session crawled before that answers
``304 Not Modified`` is read from the stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from yarl import URL

from daveloper.documents.model import Hit
from daveloper.errors import DaveloperError, FailedPrecondition
from daveloper.scraper.crawl import Crawler, SkipReason
from daveloper.scraper.github_ingest import GitHubIngest
from daveloper.scraper.jobs import JobRunner, Work
from generated.daveloper.v1 import Failure, GitHubIngestSpec, Job, JobKind, JobState, ScrapeSpec

__all__ = ["WebTools"]

#: Reads the first chunks of a session's document, of its current version only (see
#: :func:`~daveloper.documents.versions.current_chunks`): (session, document id, limit) → hits.
DocumentChunks = Callable[[str, str, int], Awaitable[list[Hit]]]

PASSAGES_PER_DOCUMENT = 4


def _failed(failure: Failure) -> DaveloperError:
    """A job's or page's failure, as the error a tool reports to the model."""
    return DaveloperError(failure.message, reason=failure.reason)


class WebTools:
    """``scrape_url`` and ``github_repo`` for the :class:`~daveloper.agent.tools.Toolbox`."""

    def __init__(self, *, runner: JobRunner, crawler: Crawler, github: GitHubIngest | None,
                 chunks: DocumentChunks) -> None:
        self._runner = runner
        self._crawler = crawler
        self._github = github
        self._chunks = chunks

    @property
    def github_enabled(self) -> bool:
        return self._github is not None

    async def scrape_url(self, session_id: str, url: str) -> list[Hit]:
        spec = ScrapeSpec(urls=[url], max_depth=0, max_pages=1, ingest=True)
        await self._crawler.check_seeds(spec, session_id)
        job = Job(kind=JobKind.SCRAPE, scrape=spec)
        return await self._run(session_id, job, self._crawler.work(spec))

    async def github_repo(self, session_id: str, repository: str) -> list[Hit]:
        assert self._github is not None
        spec = self._github.plan(GitHubIngestSpec(repository=repository, include_readme=True, ingest=True))
        job = Job(kind=JobKind.GITHUB_INGEST, github=spec)
        return await self._run(session_id, job, self._github.work(spec))

    async def _run(self, session_id: str, job: Job, work: Work) -> list[Hit]:
        started = await self._runner.start(session_id, job, work)
        documents: list[str] = []
        problem: BaseException | None = None
        finished = False
        try:
            async for event in self._runner.events(started.id):
                if event.page_fetched is not None and event.page_fetched.document_id:
                    documents.append(event.page_fetched.document_id)
                elif event.page_failed is not None and event.page_failed.failure is not None:
                    problem = _failed(event.page_failed.failure)
                elif event.page_skipped is not None and event.page_skipped.reason == SkipReason.NOT_MODIFIED:
                    # Unchanged since the session's last crawl of it: that crawl's document is current.
                    if stored := await self._stored_copy(session_id, event.page_skipped.url):
                        documents.append(stored)
                    else:
                        problem = FailedPrecondition(f"{event.page_skipped.url} was not modified, and its stored "
                                                     "copy is gone", reason=SkipReason.NOT_MODIFIED)
                elif event.page_skipped is not None:
                    problem = FailedPrecondition(f"{event.page_skipped.url} was not fetched: "
                                                 f"{event.page_skipped.reason}", reason=event.page_skipped.reason)
                if event.finished is not None:
                    finished = True
                    if event.finished.state != JobState.SUCCEEDED and event.finished.failure is not None:
                        raise _failed(event.finished.failure)
        finally:
            if not finished:  # the turn was cancelled or timed out: stop the job too
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._runner.cancel(session_id, started.id))
        if not documents and problem is not None:
            raise problem
        hits: list[Hit] = []
        for document_id in dict.fromkeys(documents):
            hits += await self._chunks(session_id, document_id, PASSAGES_PER_DOCUMENT)
        return hits

    async def _stored_copy(self, session_id: str, url: str) -> str:
        """The id of the document the session's last crawl of ``url`` stored, or "" if it is gone."""
        seen = await self._crawler.remembered(session_id, URL(url), ingest=True)
        return seen.get("document_id", "") if seen is not None else ""
