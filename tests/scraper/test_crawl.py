"""ScraperService crawl jobs over real gRPC against the generated test site."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.app import App
from daveloper.eventlog import EventLog
from daveloper.keys import Keys
from daveloper.scraper.crawl import Crawler
from daveloper.scraper.crawl_plan import CrawlLimits
from daveloper.scraper.fetcher import Fetcher, FetchLimits, open_http_session
from daveloper.scraper.job_store import JobStore
from daveloper.scraper.jobs import JobLimits, JobRun
from daveloper.scraper.safety import AddressPolicy
from generated.daveloper.v1 import (
    CancelJobRequest,
    CreateSessionRequest,
    Document,
    DocumentServiceStub,
    GetJobRequest,
    GetSessionRequest,
    Job,
    JobEvent,
    JobState,
    ListJobsRequest,
    ScrapeRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SearchRequest,
    SessionServiceStub,
    StartScrapeRequest,
    WatchJobRequest,
    WatchJobResponse,
)
from tests.grpc_helpers import bearer, reason, retry_seconds
from tests.scraper.site import SECRET_WORD, Site

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def scraper(channel: Channel) -> ScraperServiceStub:
    return ScraperServiceStub(channel)


async def crawl(scraper: ScraperServiceStub, token: str, **spec: object) -> list[JobEvent]:
    events = [r.event async for r in scraper.scrape(ScrapeRequest(spec=ScrapeSpec(**spec)), timeout=60,
                                                    metadata=bearer(token))]
    assert events[-1].finished is not None, events[-1]
    return events


def fetched(events: list[JobEvent]) -> dict[str, JobEvent]:
    return {e.page_fetched.url: e for e in events if e.page_fetched is not None}


def skipped(events: list[JobEvent]) -> dict[str, str]:
    return {e.page_skipped.url: e.page_skipped.reason for e in events if e.page_skipped is not None}


def failed(events: list[JobEvent]) -> dict[str, JobEvent]:
    return {e.page_failed.url: e for e in events if e.page_failed is not None}


async def test_crawl_honours_depth_robots_and_reports_every_skip_and_failure(
    scraper: ScraperServiceStub, token: str, site: Site
) -> None:
    events = await crawl(scraper, token, urls=[site.url("/")], max_depth=2, max_pages=500, same_site_only=True)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].queued is not None
    pages = fetched(events)
    # Depth 2 from the index: sections (1) and their pages (2), not pages reached from pages (3).
    assert site.url("/section/9") in pages
    assert site.url("/page/9/29") in pages
    assert all(e.page_fetched.depth <= 2 for e in pages.values())
    assert pages[site.url("/page/0/0")].page_fetched.title == "Page 0-0"
    # Charsets: one declared in the header, one only in a <meta> tag.
    assert pages[site.url("/latin1")].page_fetched.title == "Café crème"
    assert pages[site.url("/cp1251")].page_fetched.title == "Привет, мир"
    # The redirect chain lands on a page already known: reported once, fetched once.
    assert skipped(events)[site.url("/redirect/1")] == "DUPLICATE"

    skips = skipped(events)
    assert skips[site.url("/private/0")] == "ROBOTS_DISALLOWED"
    assert skips["https://off.site.example/"] == "OFF_SITE"
    assert not any(path.startswith("/private") for path in site.paths()), "robots.txt was not honoured"
    assert not any(url.startswith("mailto:") for url in [*pages, *skips])

    failures = failed(events)
    assert failures[site.url("/error")].page_failed.http_status == 500
    assert failures[site.url("/error")].page_failed.failure.reason == "HTTP_SERVER_ERROR"
    assert failures[site.url("/slow")].page_failed.failure.reason == "TIMEOUT"
    assert failures[site.url("/loop")].page_failed.failure.reason == "REDIRECT_LOOP"

    finished = events[-1].finished
    assert finished.state == JobState.SUCCEEDED
    assert finished.stats.pages_fetched == len(pages)
    assert finished.stats.pages_skipped == len(skips)
    assert finished.stats.pages_failed == len(failures)
    assert len(pages) > 300


async def test_max_pages_and_patterns_bound_the_crawl(scraper: ScraperServiceStub, token: str, site: Site) -> None:
    events = await crawl(scraper, token, urls=[site.url("/section/2")], max_depth=3, max_pages=12,
                         include_patterns=[r"/page/2/"], exclude_patterns=[r"/page/2/1\d$"])
    pages = fetched(events)
    assert len(pages) + len(failed(events)) <= 12
    assert events[-1].finished.stats.pages_queued == 12
    assert all("/page/2/" in url or url.endswith("/section/2") for url in pages)
    assert skipped(events)[site.url("/page/2/10")] == "EXCLUDED"
    assert site.url("/section/2") in pages  # a seed needs not match the include patterns
    assert any(e.log is not None and "page limit" in e.log.message for e in events)


async def test_ingested_pages_are_searchable_with_their_url(channel: Channel, token: str, site: Site) -> None:
    scraper = ScraperServiceStub(channel)
    events = await crawl(scraper, token, urls=[site.url("/section/1")], max_depth=1, max_pages=40, ingest=True,
                         include_patterns=[r"/page/1/[0-5]$"])
    target = site.url("/page/1/3")
    assert fetched(events)[target].page_fetched.document_id
    assert events[-1].finished.stats.documents_ingested >= 6

    hits = (await DocumentServiceStub(channel).search(SearchRequest(query=SECRET_WORD, top_k=3), timeout=10,
                                                      metadata=bearer(token))).hits
    assert hits
    assert hits[0].source_uri == target
    assert hits[0].chunk.location.url == target
    assert SECRET_WORD in hits[0].chunk.text


async def test_sitemap_adds_pages_no_link_reaches(scraper: ScraperServiceStub, token: str, site: Site) -> None:
    without = await crawl(scraper, token, urls=[site.url("/")], max_depth=0)
    assert site.url("/orphan") not in fetched(without)
    events = await crawl(scraper, token, urls=[site.url("/")], max_depth=0, use_sitemap=True)
    assert site.url("/orphan") in fetched(events)
    assert any(e.log is not None and "sitemap" in e.log.message for e in events)


async def test_recrawl_sends_validators_and_still_follows_links(
    scraper: ScraperServiceStub, token: str, site: Site
) -> None:
    first = await crawl(scraper, token, urls=[site.url("/section/4")], max_depth=1, max_pages=5)
    assert site.url("/section/4") in fetched(first)
    second = await crawl(scraper, token, urls=[site.url("/section/4")], max_depth=1, max_pages=5)
    assert skipped(second)[site.url("/section/4")] == "NOT_MODIFIED"
    # The section answered 304, yet its pages were found again from the remembered links.
    assert set(skipped(second).values()) == {"NOT_MODIFIED"}
    assert len(skipped(second)) == 5


async def test_page_failures_retry_and_limits(scraper: ScraperServiceStub, token: str, site: Site) -> None:
    events = await crawl(scraper, token, urls=[site.url("/flaky"), site.url("/huge"), site.url("/page/0/999"),
                                               site.url("/pdf")], max_depth=0)
    assert site.url("/flaky") in fetched(events)  # 429 + Retry-After: 1, then success
    assert site.paths().count("/flaky") == 2
    failures = failed(events)
    assert failures[site.url("/huge")].page_failed.failure.reason == "TOO_LARGE"
    assert failures[site.url("/page/0/999")].page_failed.http_status == 404
    assert fetched(events)[site.url("/pdf")].page_fetched.size_bytes > 0


async def test_watcher_can_leave_and_resume_without_loss_or_repeat(
    scraper: ScraperServiceStub, token: str, site: Site
) -> None:
    site.page_delay = 0.01
    job = (await scraper.start_scrape(StartScrapeRequest(spec=ScrapeSpec(urls=[site.url("/")], max_depth=2,
                                                                         max_pages=120)),
                                      timeout=10, metadata=bearer(token))).job
    seen: list[JobEvent] = []
    after = 0
    for _ in range(3):  # watch a little, drop the stream, come back from the last seq
        async with scraper.channel.request(
            "/daveloper.v1.ScraperService/WatchJob", Cardinality.UNARY_STREAM, WatchJobRequest, WatchJobResponse,
            timeout=30, metadata=bearer(token),
        ) as stream:
            await stream.send_message(WatchJobRequest(job_id=job.id, after_seq=after), end=True)
            for _ in range(25):
                response = await stream.recv_message()
                assert response is not None
                seen.append(response.event)
            await stream.cancel()
        after = seen[-1].seq
    seen += [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id, after_seq=after), timeout=60,
                                                      metadata=bearer(token))]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    replay = [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id), timeout=30,
                                                       metadata=bearer(token))]
    assert [bytes(e) for e in replay] == [bytes(e) for e in seen]
    assert seen[-1].finished.state == JobState.SUCCEEDED


async def test_cancel_stops_new_fetches_within_a_second(scraper: ScraperServiceStub, token: str, site: Site) -> None:
    site.page_delay = 0.05
    job = (await scraper.start_scrape(StartScrapeRequest(spec=ScrapeSpec(urls=[site.url("/")], max_depth=3,
                                                                         max_pages=1000)),
                                      timeout=10, metadata=bearer(token))).job
    while sum(path.startswith("/page") for path in site.paths()) < 10:  # noqa: ASYNC110 (polls the site's log)
        await asyncio.sleep(0.02)
    cancelled_at = time.monotonic()
    assert (await scraper.cancel_job(CancelJobRequest(job_id=job.id), timeout=5, metadata=bearer(token))).cancelled
    events = [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id), timeout=30,
                                                       metadata=bearer(token))]
    assert events[-1].finished.state == JobState.CANCELLED
    late = [t - cancelled_at for path, t in site.requests if t > cancelled_at]
    assert not late or max(late) < 1.0, f"requests started {max(late):.2f}s after the cancel"
    got = (await scraper.get_job(GetJobRequest(job_id=job.id), timeout=5, metadata=bearer(token))).job
    assert got.state == JobState.CANCELLED
    assert got.last_seq == events[-1].seq
    assert not (await scraper.cancel_job(CancelJobRequest(job_id=job.id), timeout=5,
                                         metadata=bearer(token))).cancelled


class CancelDroppingRedis(aioredis.Redis):
    """A client that drops one cancel during a conditional-request lookup, as redis-py may on Python 3.11.

    redis-py's ``asyncio.wait_for`` around socket writes loses a cancel that arrives as the write
    completes (CPython bpo-42130): the call returns normally and its task runs on. That race is rare;
    this makes it happen on the first lookup, so a test can show what the crawl does with it.
    """

    parked: asyncio.Event
    dropped = False

    async def get(self, name: Any) -> Any:
        if not self.dropped and b"scrapeseen" in (name if isinstance(name, bytes) else str(name).encode()):
            self.dropped = True
            self.parked.set()
            with contextlib.suppress(asyncio.CancelledError):  # the lost cancel
                await asyncio.sleep(30)
        return await super().get(name)


async def test_a_crawl_ends_on_cancel_even_when_a_library_drops_the_cancel(redis_url: str, site: Site) -> None:
    site.page_delay = 0.02
    redis = cast(CancelDroppingRedis, CancelDroppingRedis.from_url(redis_url))
    redis.parked = asyncio.Event()
    policy = AddressPolicy.from_entries([f"127.0.0.1:{site.port}"])
    limits = FetchLimits(per_host_concurrency=4, timeout_seconds=5)
    try:
        async with EventLog(redis, retention=10_000, ttl_seconds=60) as events, \
                open_http_session(policy, limits) as http:
            async def no_ingest(*_: object) -> Document:
                raise AssertionError("ingest is off")

            async def exists(*_: str) -> bool:
                return False

            crawler = Crawler(fetcher=Fetcher(http, policy, limits), redis=redis, ingest=no_ingest,
                              document_exists=exists, limits=CrawlLimits(workers=4))
            job = Job(id="job_dropped_cancel")
            run = JobRun(job, "s", events, JobStore(redis), JobLimits(pages_per_day=10_000))
            crawl_task = asyncio.create_task(crawler.work(ScrapeSpec(urls=[site.url("/")], max_depth=3,
                                                                     max_pages=1000))(run))
            await asyncio.wait_for(redis.parked.wait(), 10)  # a worker is in a lookup: cancel now
            crawl_task.cancel()
            # Without the check, the worker that lost its cancel crawls all 300 pages alone, then waits
            # on the empty frontier for ever (the crawl never ends; its job never reaches a final state).
            done, _ = await asyncio.wait([crawl_task], timeout=5)
            assert done, "the cancelled crawl did not end"
            assert crawl_task.cancelled()
    finally:
        await redis.aclose()


async def test_jobs_are_listed_per_session_and_hidden_from_others(
    channel: Channel, scraper: ScraperServiceStub, token: str, site: Site
) -> None:
    events = await crawl(scraper, token, urls=[site.url("/orphan")], max_depth=0)
    job_id = events[0].queued.job.id
    listed = (await scraper.list_jobs(ListJobsRequest(), timeout=5, metadata=bearer(token))).jobs
    assert [j.id for j in listed] == [job_id]
    assert listed[0].state == JobState.SUCCEEDED
    assert listed[0].stats.pages_fetched == 1
    assert listed[0].scrape.urls == [site.url("/orphan")]

    other = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token
    for call in (scraper.get_job(GetJobRequest(job_id=job_id), timeout=5, metadata=bearer(other)),
                 scraper.cancel_job(CancelJobRequest(job_id=job_id), timeout=5, metadata=bearer(other))):
        with pytest.raises(GRPCError) as error:
            await call
        assert error.value.status == Status.NOT_FOUND
    with pytest.raises(GRPCError) as error:
        await anext(aiter(scraper.watch_job(WatchJobRequest(job_id=job_id), timeout=5, metadata=bearer(other))))
    assert error.value.status == Status.NOT_FOUND
    assert (await scraper.list_jobs(ListJobsRequest(), timeout=5, metadata=bearer(other))).jobs == []


async def test_session_limits_on_concurrent_jobs_and_daily_pages(
    app: App, scraper: ScraperServiceStub, token: str, site: Site
) -> None:
    site.page_delay = 2.0  # each job fetches one slow page: all four are still running below
    spec = ScrapeSpec(urls=[site.url("/section/0")], max_depth=0)
    started = []
    for _ in range(4):  # the test settings allow 4 concurrent jobs per session
        started.append((await scraper.start_scrape(StartScrapeRequest(spec=spec), timeout=15,
                                                   metadata=bearer(token))).job.id)
    with pytest.raises(GRPCError) as error:
        await scraper.start_scrape(StartScrapeRequest(spec=spec), timeout=15, metadata=bearer(token))
    assert error.value.status == Status.RESOURCE_EXHAUSTED
    assert reason(error.value) == "CONCURRENT_JOBS"
    assert retry_seconds(error.value) is not None
    for job_id in started:
        await scraper.cancel_job(CancelJobRequest(job_id=job_id), timeout=15, metadata=bearer(token))
    for job_id in started:
        [_ async for _ in scraper.watch_job(WatchJobRequest(job_id=job_id), timeout=60, metadata=bearer(token))]
    # Slots are free again once the jobs ended.
    site.page_delay = 0
    events = await crawl(scraper, token, urls=[site.url("/orphan")], max_depth=0)
    assert events[-1].finished.state == JobState.SUCCEEDED


async def test_daily_page_quota_fails_the_job_with_retry_info(
    app: App, channel: Channel, token: str, site: Site
) -> None:
    # The quota counter is shared through Redis: fill it up to two pages before the limit.
    session_id = (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                                metadata=bearer(token))).session.id
    day = time.strftime("%Y%m%d", time.gmtime())
    await app.redis.set(Keys().scrape_pages(session_id, day), app.settings.scrape_pages_per_day - 2)
    events = await crawl(ScraperServiceStub(channel), token, urls=[site.url("/section/0")], max_depth=1)
    finished = events[-1].finished
    assert finished.state == JobState.FAILED
    assert finished.failure.reason == "PAGES_PER_DAY"
    assert finished.failure.retry_delay is not None
    assert finished.stats.pages_fetched == 2
