"""robots.txt: fetched once per site, parsed by Protego, cached in Redis for every instance.

Unavailable robots.txt files are treated as RFC 9309 says: a 4xx answer
means no rules (everything allowed); a 5xx answer or an unreachable site
means the crawler must assume everything is disallowed.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from protego import Protego
from yarl import URL

from daveloper.errors import DaveloperError, NotFound
from daveloper.scraper.fetcher import Fetcher
from daveloper.scraper.safety import Refusal

__all__ = ["RobotsCache", "SiteRules"]

#: Bytes of robots.txt read; RFC 9309 requires at least 500 KiB to be parsed.
MAX_ROBOTS_BYTES = 512 * 1024
_ALLOW_ALL = b""
_DISALLOW_ALL = b"User-agent: *\nDisallow: /\n"


def _retrieve(future: asyncio.Future[SiteRules]) -> None:
    """Mark a failure as seen: each waiter gets it, and none is left to be reported at garbage collection."""
    if not future.cancelled():
        future.exception()


class SiteRules:
    """The parsed robots.txt of one origin."""

    def __init__(self, text: bytes, user_agent: str, *, unreachable: bool = False) -> None:
        self._rules = Protego.parse(text.decode("utf-8", errors="replace"))
        self._agent = user_agent
        self.unreachable = unreachable

    def allowed(self, url: URL) -> bool:
        return bool(self._rules.can_fetch(str(url), self._agent))

    @property
    def crawl_delay(self) -> float | None:
        delay = self._rules.crawl_delay(self._agent)
        return float(delay) if delay is not None else None

    @property
    def sitemaps(self) -> list[str]:
        return list(self._rules.sitemaps)


class RobotsCache:
    """robots.txt rules by origin, shared by one job's workers (and across instances through Redis)."""

    def __init__(self, fetcher: Fetcher, redis: aioredis.Redis, *, ttl_seconds: int = 3600,
                 prefix: str = "dv:robots:") -> None:
        self._fetcher = fetcher
        self._redis = redis
        self._ttl = ttl_seconds
        self._prefix = prefix
        self._sites: dict[str, asyncio.Future[SiteRules]] = {}

    async def rules(self, url: URL) -> SiteRules:
        origin = str(url.origin())
        pending = self._sites.get(origin)
        if pending is None:
            # One fetch per origin however many workers ask at once; a worker that is
            # cancelled while waiting must not cancel the fetch the others wait for.
            pending = self._sites[origin] = asyncio.ensure_future(self._load(url.origin()))
            pending.add_done_callback(_retrieve)
        return await asyncio.shield(pending)

    async def aclose(self) -> None:
        """Cancel fetches nobody waits for any more (the crawl ended)."""
        pending = [f for f in self._sites.values() if not f.done()]
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _load(self, origin: URL) -> SiteRules:
        agent = self._fetcher.limits.user_agent.split("/")[0]
        key = self._prefix + str(origin)
        if isinstance(cached := await self._redis.get(key), bytes):
            return self._apply(origin, SiteRules(cached[1:], agent, unreachable=cached[:1] == b"!"))
        unreachable = False
        try:
            response = await self._fetcher.fetch(origin / "robots.txt")
            text = response.body[:MAX_ROBOTS_BYTES]
        except Refusal:
            raise
        except NotFound:
            text = _ALLOW_ALL
        except DaveloperError as exc:
            status = int(exc.metadata.get("http_status", "0") or 0)
            unreachable = not 400 <= status < 500
            text = _DISALLOW_ALL if unreachable else _ALLOW_ALL
        await self._redis.set(key, (b"!" if unreachable else b"=") + text, ex=60 if unreachable else self._ttl)
        return self._apply(origin, SiteRules(text, agent, unreachable=unreachable))

    def _apply(self, origin: URL, rules: SiteRules) -> SiteRules:
        if (delay := rules.crawl_delay) is not None:
            self._fetcher.set_crawl_delay(origin, delay)
        return rules
