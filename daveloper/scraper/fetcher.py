"""A polite, bounded HTTP fetcher on aiohttp.

Every fetch goes through the :class:`~daveloper.scraper.safety.AddressPolicy`
(scheme and address literals here, resolved addresses in the connector's
resolver), follows redirects itself so that each hop is checked, waits its turn
per host (concurrency and delay) and globally, caps the body before and while
reading it, and retries 429 and 503 answers honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy
from opentelemetry.trace import SpanKind
from yarl import URL

from daveloper.breaker import BreakerMap
from daveloper.errors import (
    DaveloperError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from daveloper.metrics import Metrics
from daveloper.scraper.safety import AddressPolicy, GuardedResolver, Refusal, normalise_url, refusal_reason
from daveloper.tracing import span

__all__ = ["FetchLimits", "Fetcher", "Refusal", "Response", "http_error", "open_http_session", "retry_after_seconds"]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRYABLE = frozenset({429, 503})
USER_AGENT = "Daveloper/0.1 (+self-hosted; scraper)"


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How hard and how far the fetcher may go."""

    #: Requests in flight across all hosts.
    concurrency: int = 16
    #: Requests in flight to one host.
    per_host_concurrency: int = 2
    #: Seconds between the starts of two requests to one host (robots.txt Crawl-delay raises it).
    per_host_delay: float = 0.0
    #: Longest Crawl-delay honoured; a site asking for more is crawled at this pace.
    max_crawl_delay: float = 10.0
    timeout_seconds: float = 20.0
    max_bytes: int = 8 * 1024 * 1024
    max_redirects: int = 5
    #: Extra attempts after a 429/503 or a connection failure.
    retries: int = 2
    #: A ``Retry-After`` longer than this fails the page instead of waiting.
    max_retry_after: float = 30.0
    #: Pages of one host that fail in a row (after their retries) before the host is refused for a while.
    host_failures: int = 5
    host_reset_seconds: float = 30.0
    user_agent: str = USER_AGENT


@dataclass(slots=True)
class Response:
    """A fetched resource after redirects."""

    url: URL
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    redirects: list[URL] = field(default_factory=list)

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def media_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("Content-Type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"\' ').lower()
        return None


class _HostGate:
    """Per-host turn-taking: bounded concurrency, and a minimum gap between request starts."""

    def __init__(self, concurrency: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.delay = 0.0
        self._next_start = 0.0
        self._lock = asyncio.Lock()

    async def turn(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            wait = self._next_start - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = loop.time() + self.delay


@contextlib.asynccontextmanager
async def open_http_session(policy: AddressPolicy, limits: FetchLimits) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose every connection is checked by ``policy``."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), limit=limits.concurrency,
                                     limit_per_host=limits.per_host_concurrency, ttl_dns_cache=60)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": limits.user_agent},
        timeout=aiohttp.ClientTimeout(total=limits.timeout_seconds), auto_decompress=True,
    ) as session:
        yield session


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def http_error(status: int, url: URL) -> DaveloperError:
    """The error a final non-2xx answer stands for."""
    metadata = {"url": str(url)[:300], "http_status": str(status)}
    message = f"{url.host} answered HTTP {status}"
    if status in (404, 410):
        return NotFound(message, reason="HTTP_NOT_FOUND", metadata=metadata)
    if status == 429:
        return ResourceExhausted(message, reason="HTTP_RATE_LIMITED", metadata=metadata)
    if status >= 500:
        return Unavailable(message, reason="HTTP_SERVER_ERROR", metadata=metadata)
    return FailedPrecondition(message, reason="HTTP_CLIENT_ERROR", metadata=metadata)


class Fetcher:
    """Fetches URLs for crawl jobs; one per process, shared by every job."""

    def __init__(self, session: aiohttp.ClientSession, policy: AddressPolicy, limits: FetchLimits, *,
                 metrics: Metrics | None = None) -> None:
        self._session = session
        self._policy = policy
        self._resolver = GuardedResolver(policy)
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._hosts: dict[str, _HostGate] = {}
        #: One breaker per host: a site that keeps failing is refused at once, others are not affected.
        self.breakers = BreakerMap("scrape_hosts", failures=limits.host_failures,
                                   reset_seconds=limits.host_reset_seconds, metrics=metrics)

    @property
    def policy(self) -> AddressPolicy:
        return self._policy

    async def check_destination(self, url: URL) -> None:
        """Refuse ``url`` now if the policy blocks it, resolving its host as a fetch would."""
        url = normalise_url(url)
        self._policy.check_url(url)
        assert url.host is not None
        try:
            await self._resolver.resolve(url.host, url.port or 0)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name idna cannot encode
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InvalidArgument(f"{url.host} does not resolve: {problem}", reason="UNRESOLVABLE_HOST",
                                  violations=[("spec.urls", f"{url.host} does not resolve")]) from None

    async def aclose(self) -> None:
        await self._resolver.close()

    def _gate(self, url: URL) -> _HostGate:
        key = f"{url.host}:{url.port}"
        gate = self._hosts.get(key)
        if gate is None:
            gate = self._hosts[key] = _HostGate(self.limits.per_host_concurrency)
            gate.delay = self.limits.per_host_delay
        return gate

    def set_crawl_delay(self, url: URL, delay: float) -> None:
        """Honour a site's Crawl-delay (bounded by ``max_crawl_delay``)."""
        gate = self._gate(url)
        gate.delay = max(self.limits.per_host_delay, min(delay, self.limits.max_crawl_delay))

    async def fetch(self, url: URL, *, headers: Mapping[str, str] | None = None) -> Response:
        """GET ``url``, following at most ``max_redirects`` redirects, each hop checked.

        Returns 2xx and 304 answers; raises :class:`Refusal` for a blocked
        destination and another :class:`DaveloperError` (``http_status`` in its
        metadata) for anything else that went wrong.
        """
        # Hosts in canonical form from here on: the policy, the per-host gates and breakers and the
        # request itself all see the one spelling (127.1 is 127.0.0.1).
        url = normalise_url(url)
        redirects: list[URL] = []
        seen = {url}
        while True:
            response = await self._fetch_one(url, headers)
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location:
                break
            if len(redirects) >= self.limits.max_redirects:
                raise FailedPrecondition(f"more than {self.limits.max_redirects} redirects from {redirects[0]}",
                                         reason="TOO_MANY_REDIRECTS", metadata={"url": str(url)[:300]})
            redirects.append(url)
            try:
                url = normalise_url(url.join(URL(location)))
            except ValueError:  # yarl's own refusal of the Location (InvalidArgument passes through)
                raise FailedPrecondition(f"{url} redirects to an invalid URL", reason="INVALID_REDIRECT",
                                         metadata={"url": str(url)[:300]}) from None
            if url in seen:
                raise FailedPrecondition(f"redirect loop at {url}", reason="REDIRECT_LOOP",
                                         metadata={"url": str(url)[:300]})
            seen.add(url)
        response.redirects = redirects
        if response.status != 304 and not 200 <= response.status < 300:
            raise http_error(response.status, url)
        return response

    async def _fetch_one(self, url: URL, headers: Mapping[str, str] | None) -> Response:
        """One hop through the host's breaker; a 5xx after the retries counts as the host failing."""
        self._policy.check_url(url)
        breaker = self.breakers[url.host or ""]
        breaker.check()
        try:
            with span("http GET", SpanKind.CLIENT, **{"server.address": url.host or ""}):
                response = await self._fetch_retrying(url, headers)
        except Exception as exc:
            breaker.outcome(exc)
            raise
        except BaseException:
            breaker.abandon()
            raise
        if response.status >= 500:
            breaker.failure()
        else:
            breaker.success()
        return response

    async def _fetch_retrying(self, url: URL, headers: Mapping[str, str] | None) -> Response:
        gate = self._gate(url)
        attempt = 0
        while True:
            async with gate.slots, self._slots:
                await gate.turn()
                try:
                    response = await self._request(url, headers)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if (refused := refusal_reason(exc)) is not None:
                        raise refused from None
                    if attempt >= self.limits.retries:
                        raise _transport_error(url, exc) from exc
                    wait = 0.5 * 2**attempt
                else:
                    if response.status not in RETRYABLE or attempt >= self.limits.retries:
                        return response
                    wait = retry_after_seconds(response.headers.get("Retry-After")) or 0.5 * 2**attempt
                    if wait > self.limits.max_retry_after:
                        return response
            attempt += 1
            await asyncio.sleep(wait)

    async def _request(self, url: URL, headers: Mapping[str, str] | None) -> Response:
        async with self._session.get(url, headers=headers, allow_redirects=False) as http:
            if http.status in REDIRECTS or http.status == 304:
                return Response(url, http.status, http.headers, b"")
            declared = http.content_length
            if declared is not None and declared > self.limits.max_bytes:
                raise _too_large(url, self.limits.max_bytes)
            body = bytearray()
            async for chunk in http.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self.limits.max_bytes:
                    raise _too_large(url, self.limits.max_bytes)
            return Response(url, http.status, http.headers, bytes(body))


def _too_large(url: URL, limit: int) -> DaveloperError:
    return FailedPrecondition(f"{url} is larger than the {limit}-byte page limit", reason="TOO_LARGE",
                              metadata={"url": str(url)[:300], "limit": str(limit)})


def _transport_error(url: URL, exc: BaseException) -> DaveloperError:
    if isinstance(exc, TimeoutError):
        return Unavailable(f"{url.host} did not answer in time", reason="TIMEOUT", metadata={"url": str(url)[:300]})
    return Unavailable(f"could not reach {url.host}: {exc}", reason="CONNECTION_FAILED",
                       metadata={"url": str(url)[:300]})

