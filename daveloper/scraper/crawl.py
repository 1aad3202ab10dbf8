"""Crawl jobs: breadth-first from the seeds, within the spec's depth, page and URL limits.

A spec is first checked against the server's limits into a plan
(:mod:`daveloper.scraper.crawl_plan`), before a job exists. Each URL is
considered once (in canonical form). Before it takes a share of the page
budget it must pass the spec's filters (same site, include and exclude
patterns) and the site's robots.txt; every URL turned away is reported once
with a stable reason. Fetched pages are reported with their status, size and
title, optionally ingested into the session's documents (with the URL as
source), and their links offered to the frontier.

Conditional requests: a page's ETag and Last-Modified, and the links it had,
are kept per session in Redis; a re-crawl sends them, and a ``304`` page is
reported as ``NOT_MODIFIED`` while its remembered links are still followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from yarl import URL

from daveloper.errors import DaveloperError, InvalidArgument, ResourceExhausted
from daveloper.infra.redis import redis_call
from daveloper.keys import Keys
from daveloper.scraper.crawl_plan import CrawlLimits, CrawlPlan, plan_crawl
from daveloper.scraper.extract import canonical_url, decode, is_html, parse_html, parse_sitemap
from daveloper.scraper.fetcher import Fetcher, Response
from daveloper.scraper.jobs import JobRun, Work
from daveloper.scraper.robots import RobotsCache
from daveloper.scraper.safety import Refusal, normalise_url
from generated.daveloper.v1 import Document, PageFetched, ScrapeSpec

__all__ = ["Crawler", "PageIngest", "SkipReason"]

#: Ingests one fetched page: (session, bytes, name, media type, source URL, metadata) → the document.
PageIngest = Callable[[str, bytes, str, str, str, dict[str, str]], Awaitable[Document]]
#: Does the session still have this document?
DocumentExists = Callable[[str, str], Awaitable[bool]]
#: Told of every destination the address policy refused: (session, URL, the refusal).
RefusalHook = Callable[[str, str, Refusal], Awaitable[None]]

INGESTABLE = frozenset({"application/pdf", "text/plain", "text/markdown", "text/x-markdown"})


class SkipReason:
    """Stable reasons a URL is not fetched (``PageSkipped.reason``)."""

    ROBOTS_DISALLOWED = "ROBOTS_DISALLOWED"
    OFF_SITE = "OFF_SITE"
    EXCLUDED = "EXCLUDED"
    NOT_INCLUDED = "NOT_INCLUDED"
    DUPLICATE = "DUPLICATE"
    NOT_MODIFIED = "NOT_MODIFIED"
    UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"


class Crawler:
    """Validates crawl specs and runs crawls; one per process."""

    def __init__(self, *, fetcher: Fetcher, redis: aioredis.Redis, ingest: PageIngest,
                 document_exists: DocumentExists, limits: CrawlLimits, prefix: str = "dv:",
                 on_refused: RefusalHook | None = None) -> None:
        self.fetcher = fetcher
        self._on_refused = on_refused
        self._redis = redis
        self._ingest = ingest
        self._document_exists = document_exists
        self.limits = limits
        self._keys = Keys(prefix)

    def plan(self, spec: ScrapeSpec) -> CrawlPlan:
        """Check a spec (see :func:`~daveloper.scraper.crawl_plan.plan_crawl`)."""
        return plan_crawl(spec, self.limits, self.fetcher.policy)

    async def check_seeds(self, spec: ScrapeSpec, session_id: str = "") -> None:
        """Resolve every seed host now, so a blocked destination is refused before a job exists."""
        try:
            for seed in self.plan(spec).seeds:
                await self.fetcher.check_destination(seed)
        except Refusal as refused:
            await self.refused(session_id, refused.metadata.get("url", "") or ", ".join(spec.urls)[:300], refused)
            raise

    async def refused(self, session_id: str, url: str, refusal: Refusal) -> None:
        if self._on_refused is not None:
            await self._on_refused(session_id, url, refusal)

    def work(self, spec: ScrapeSpec) -> Work:
        plan = self.plan(spec)
        return lambda run: _Crawl(self, spec, plan, run).run()

    # -- what a session has seen before -------------------------------------------------

    def _seen_key(self, session_id: str, url: URL) -> str:
        digest = hashlib.sha256(str(url).encode()).hexdigest()[:32]
        return self._keys.scrape_seen(session_id, digest)

    async def remembered(self, session_id: str, url: URL, *, ingest: bool) -> dict[str, str] | None:
        raw = await redis_call(self._redis.get(self._seen_key(session_id, url)))
        if raw is None:
            return None
        seen: dict[str, str] = json.loads(raw)
        if ingest and not (seen.get("document_id") and await self._document_exists(session_id, seen["document_id"])):
            return None  # this crawl must ingest what the last one did not (or what was deleted since)
        return seen

    async def remember(self, session_id: str, url: URL, response: Response, links: Sequence[URL],
                       document_id: str) -> None:
        etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if not etag and not modified:
            return
        record = {"etag": etag or "", "last_modified": modified or "", "document_id": document_id,
                  "title": "", "links": "\n".join(str(link) for link in links[:500])}
        key = self._seen_key(session_id, url)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, json.dumps(record), ex=7 * 86400)
            self._keys.index_in(pipe, session_id, key, 7 * 86400)  # for the sweeper
            await redis_call(pipe.execute())

    async def ingest(self, session_id: str, data: bytes, name: str, media_type: str, url: str) -> Document:
        return await self._ingest(session_id, data, name, media_type, url, {"source": "scrape"})


class _Crawl:
    """One crawl's frontier and workers."""

    def __init__(self, crawler: Crawler, spec: ScrapeSpec, plan: CrawlPlan, run: JobRun) -> None:
        self._crawler = crawler
        self._fetcher = crawler.fetcher
        self._spec = spec
        self._plan = plan
        self._run = run
        self._robots = RobotsCache(crawler.fetcher, crawler._redis, prefix=crawler._keys.robots())
        self._sites = {seed.host for seed in plan.seeds}
        self._seen: set[URL] = set()
        self._hashes: set[str] = set()
        self._queue: asyncio.Queue[tuple[URL, int]] = asyncio.Queue()
        self._scheduled = 0
        self._quota_hit: ResourceExhausted | None = None
        self._budget_reported = False
        self._ingest_slots = asyncio.Semaphore(crawler.limits.ingesting)
        self._ingesting: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        try:
            await self._crawl()
        finally:
            await self._robots.aclose()
        await self._run.progress(force=True)

    async def _crawl(self) -> None:
        await self._run.log(f"crawling {len(self._plan.seeds)} seed(s), depth {self._plan.max_depth}, "
                            f"up to {self._plan.max_pages} pages")
        for seed in self._plan.seeds:
            await self._offer(seed, 0, seed=True)
        if self._spec.use_sitemap:
            await self._read_sitemaps()
        try:
            # Pages being ingested outlive the fetch that found them: the crawl ends after both.
            async with asyncio.TaskGroup() as self._ingesting, asyncio.TaskGroup() as workers:
                tasks = [workers.create_task(self._work()) for _ in range(self._crawler.limits.workers)]
                await self._queue.join()
                for task in tasks:
                    task.cancel()
        except* DaveloperError as group:
            # A job-level failure (Redis) in one worker ends the crawl; report that error.
            raise group.exceptions[0] from None
        if self._quota_hit is not None:
            raise self._quota_hit

    async def _work(self) -> None:
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A cancel that a library swallowed on its way through this page (redis-py's socket writes on
                # Python 3.11, see redis_call): stop here, or this worker would crawl the rest of the frontier
                # alone and then wait on the empty queue for ever, and the cancelled job would never end.
                raise asyncio.CancelledError
            url, depth = await self._queue.get()
            try:
                if self._quota_hit is None:
                    try:
                        await self._run.take_page()
                    except ResourceExhausted as exc:
                        # Out of pages for today: fetch nothing more, but let the pages already paid
                        # for finish; the crawl then fails with this error.
                        self._quota_hit = exc
                    else:
                        await self._visit(url, depth)
            finally:
                self._queue.task_done()

    async def _offer(self, url: URL, depth: int, *, seed: bool = False) -> None:
        try:
            # The canonical host first: 127.1 and 127.0.0.1 are one URL, seen once, refused alike.
            url = normalise_url(url)
        except InvalidArgument as invalid:
            if url not in self._seen:
                self._seen.add(url)
                await self._run.failed(str(url)[:2048], invalid)
            return None
        if url in self._seen:
            return None
        self._seen.add(url)
        text = str(url)
        if not seed and self._spec.same_site_only and url.host not in self._sites:
            return await self._run.skipped(text, SkipReason.OFF_SITE)
        if self._plan.include and not any(p.search(text) for p in self._plan.include) and not seed:
            return await self._run.skipped(text, SkipReason.NOT_INCLUDED)
        if any(p.search(text) for p in self._plan.exclude):
            return await self._run.skipped(text, SkipReason.EXCLUDED)
        if self._scheduled >= self._plan.max_pages:
            if not self._budget_reported:
                self._budget_reported = True
                await self._run.log(f"page limit of {self._plan.max_pages} reached; not queueing more", "WARNING")
            return None
        try:
            rules = await self._robots.rules(url)
        except Refusal as refused:
            await self._crawler.refused(self._run.session_id, text, refused)
            return await self._run.failed(text, refused)
        if not rules.allowed(url):
            reason = "robots.txt could not be read" if rules.unreachable else "robots.txt disallows it"
            await self._run.skipped(text, SkipReason.ROBOTS_DISALLOWED)
            if seed:
                await self._run.log(f"{text}: {reason}", "WARNING")
            return None
        self._scheduled += 1
        self._run.stats.pages_queued = self._scheduled
        self._queue.put_nowait((url, depth))
        return None

    async def _visit(self, url: URL, depth: int) -> None:
        session_id, ingest = self._run.session_id, self._spec.ingest
        remembered = await self._crawler.remembered(session_id, url, ingest=ingest)
        headers = {}
        if remembered is not None:
            headers = {k: v for k, v in (("If-None-Match", remembered["etag"]),
                                         ("If-Modified-Since", remembered["last_modified"])) if v}
        try:
            response = await self._fetcher.fetch(url, headers=headers)
        except DaveloperError as exc:
            if isinstance(exc, Refusal):
                await self._crawler.refused(session_id, str(url), exc)
            return await self._run.failed(str(url), exc, int(exc.metadata.get("http_status", "0") or 0))
        if response.not_modified and remembered is not None:
            await self._run.skipped(str(url), SkipReason.NOT_MODIFIED)
            links = [URL(line) for line in remembered["links"].splitlines() if line]
            return await self._follow(links, depth)
        final = canonical_url(response.url) or url
        if final != url:
            if final in self._seen and response.redirects:
                return await self._run.skipped(str(url), SkipReason.DUPLICATE)
            self._seen.add(final)
        digest = hashlib.sha256(response.body).hexdigest()
        if digest in self._hashes:
            return await self._run.skipped(str(final), SkipReason.DUPLICATE)
        self._hashes.add(digest)
        await self._page(url, final, response, depth)
        return None

    async def _page(self, url: URL, final: URL, response: Response, depth: int) -> None:
        media_type, body = response.media_type, response.body
        title, links, noindex = "", tuple[URL, ...](), False
        if is_html(media_type, body):
            text, _ = decode(body, response.charset)
            page = parse_html(text, final)
            title, links, noindex = page.title, page.links, page.noindex
            body, media_type = text.encode(), "text/html; charset=utf-8"
        elif media_type not in INGESTABLE:
            return await self._run.skipped(str(final), SkipReason.UNSUPPORTED_TYPE)
        if self._spec.ingest and not noindex and self._ingesting is not None:
            # The page is reported once ingested; meanwhile this worker fetches on.
            await self._ingest_slots.acquire()
            self._ingesting.create_task(self._ingest(url, final, response, depth, body, media_type, title, links))
        else:
            await self._fetched(url, final, response, depth, title, links, "")
        await self._follow(links, depth)
        return None

    async def _ingest(self, url: URL, final: URL, response: Response, depth: int, body: bytes, media_type: str,
                      title: str, links: Sequence[URL]) -> None:
        try:
            name = title or final.name or final.host or "page"
            try:
                document = await self._crawler.ingest(self._run.session_id, body, name, media_type, str(final))
            except DaveloperError as exc:
                await self._run.log(f"{final}: not ingested: {exc.message}", "WARNING")
                document_id = ""
            else:
                document_id, title = document.id, title or document.title
            await self._fetched(url, final, response, depth, title, links, document_id)
        finally:
            self._ingest_slots.release()

    async def _fetched(self, url: URL, final: URL, response: Response, depth: int, title: str,
                       links: Sequence[URL], document_id: str) -> None:
        await self._run.fetched(PageFetched(url=str(final), http_status=response.status,
                                            size_bytes=len(response.body), title=title, depth=depth,
                                            document_id=document_id))
        await self._crawler.remember(self._run.session_id, url, response, links, document_id)

    async def _follow(self, links: Sequence[URL], depth: int) -> None:
        if depth >= self._plan.max_depth:
            return
        for link in links:
            await self._offer(link, depth + 1)

    async def _read_sitemaps(self) -> None:
        for origin in dict.fromkeys(seed.origin() for seed in self._plan.seeds):
            try:
                rules = await self._robots.rules(origin)
            except Refusal:
                continue
            pending = [URL(u) for u in rules.sitemaps] or [origin / "sitemap.xml"]
            for _ in range(self._crawler.limits.max_sitemaps):
                if not pending:
                    break
                sitemap = pending.pop(0)
                try:
                    response = await self._fetcher.fetch(sitemap)
                except DaveloperError as exc:
                    await self._run.log(f"sitemap {sitemap}: {exc.message}", "WARNING")
                    continue
                pages, nested = parse_sitemap(response.body, sitemap)
                pending += nested
                await self._run.log(f"sitemap {sitemap}: {len(pages)} URL(s)")
                for page in pages:
                    await self._offer(page, 0)
