"""The scraper subsystem started: the fetcher behind the address policy, crawl and GitHub jobs, ``ScraperService``.

:func:`open_scraper` opens it on a :class:`~daveloper.infra.core.Core`, storing
what it fetches through the documents subsystem, and closes it in reverse. As a
holder of session data it purges a session's jobs (:meth:`Scraper.purge_session`)
and counts its job and page quotas.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp

from daveloper.audit import AuditLog
from daveloper.breaker import CircuitBreaker
from daveloper.documents.subsystem import Documents
from daveloper.infra.core import Core
from daveloper.rpc import Authenticator
from daveloper.scraper.crawl import Crawler, RefusalHook
from daveloper.scraper.crawl_plan import CrawlLimits
from daveloper.scraper.fetcher import Fetcher, FetchLimits, open_http_session
from daveloper.scraper.github import GitHubClient
from daveloper.scraper.github_ingest import GitHubIngest, GitHubLimits
from daveloper.scraper.job_store import JobStore
from daveloper.scraper.jobs import JobLimits, JobRunner, job_scope
from daveloper.scraper.safety import AddressPolicy, Refusal
from daveloper.servicers.scraper import ScraperService
from daveloper.usage import QuotaReading, count_leases, counter

__all__ = ["Scraper", "open_scraper"]


@dataclass(frozen=True, slots=True)
class Scraper:
    """The running scraper subsystem (see the module docstring)."""

    core: Core
    store: JobStore
    runner: JobRunner
    crawler: Crawler
    github: GitHubIngest
    #: ``ScraperService``, with the health probes it follows.
    services: dict[object, tuple[str, ...]]

    @property
    def quotas(self) -> Sequence[QuotaReading]:
        settings = self.core.settings
        return [count_leases(self.store.leases.key, "concurrent_jobs", lambda: settings.scrape_jobs_per_session),
                counter(self.store.pages_key, "scrape_pages_today", lambda: settings.scrape_pages_per_day)]

    async def purge_session(self, session_id: str) -> None:
        """The session's job logs (named by the job ids its records list, so first), then the records."""
        for job_id in await self.store.job_ids(session_id):
            await self.core.events.delete(job_scope(job_id))
        await self.store.purge_session(session_id)


def _audit_refusals(audit: AuditLog) -> RefusalHook:
    """Fetches the address policy refused go to the audit log."""
    async def refused(session_id: str, url: str, refusal: Refusal) -> None:
        await audit.record("fetch.refused", session_id=session_id, url=url[:300], reason=refusal.reason,
                           address=refusal.metadata.get("address", ""))
    return refused


@contextlib.asynccontextmanager
async def open_scraper(core: Core, auth: Authenticator, documents: Documents) -> AsyncIterator[Scraper]:
    """Start the scraper on ``core``, storing pages through ``documents``; its servicer checks calls with ``auth``."""
    settings, metrics, prefix = core.settings, core.metrics, core.settings.redis_prefix
    limits = FetchLimits(
        concurrency=settings.scrape_concurrency, per_host_concurrency=settings.scrape_per_host_concurrency,
        per_host_delay=settings.scrape_per_host_delay_ms / 1000, timeout_seconds=settings.scrape_timeout_seconds,
        max_bytes=settings.scrape_max_page_bytes, host_failures=settings.breaker_failures,
        host_reset_seconds=settings.breaker_reset_seconds,
    )
    policy = AddressPolicy.from_entries(settings.scrape_allow)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(open_http_session(policy, limits))
        fetcher = Fetcher(http, policy, limits, metrics=metrics)
        stack.push_async_callback(fetcher.aclose)
        # GitHub's API root is the operator's choice, not a user's: it needs no address policy.
        github_http = await stack.enter_async_context(aiohttp.ClientSession())
        store = JobStore(core.redis, prefix=prefix, ttl_seconds=settings.event_ttl_seconds)
        runner = JobRunner(events=core.events, store=store, jobs=core.jobs, work=core.work, metrics=metrics,
                           limits=JobLimits(concurrent_jobs=settings.scrape_jobs_per_session,
                                            pages_per_day=settings.scrape_pages_per_day))
        core.work.on_orphan("job", runner.fail_orphan)
        crawler = Crawler(fetcher=fetcher, redis=core.redis, ingest=documents.ingest_page, prefix=prefix,
                          document_exists=documents.document_exists, on_refused=_audit_refusals(core.audit),
                          limits=CrawlLimits(workers=settings.scrape_concurrency))
        github = GitHubIngest(
            client=GitHubClient(github_http, core.redis, base_url=settings.github_api_url, token=settings.github_token,
                                timeout=settings.scrape_timeout_seconds, prefix=prefix,
                                breaker=CircuitBreaker("github", failures=settings.breaker_failures,
                                                       reset_seconds=settings.breaker_reset_seconds, metrics=metrics)),
            ingest=documents.ingest_page,
            limits=GitHubLimits(max_file_bytes=min(settings.scrape_max_page_bytes, 1 << 20)),
        )
        service = ScraperService(auth=auth, runner=runner, crawler=crawler, github=github,
                                 heartbeat_seconds=settings.heartbeat_seconds)
        yield Scraper(core, store, runner, crawler, github, {service: ("redis", "qdrant")})
