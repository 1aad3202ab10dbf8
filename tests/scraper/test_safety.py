"""SSRF refusals: by scheme, by resolved address, on redirects; the allow-list opens exactly what it names."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from yarl import URL

from daveloper.app import App
from daveloper.audit import AuditLog
from daveloper.errors import InvalidArgument
from daveloper.scraper.fetcher import Fetcher, FetchLimits, open_http_session
from daveloper.scraper.safety import AddressPolicy, GuardedResolver, Refusal, canonical_host
from generated.daveloper.v1 import ScrapeRequest, ScraperServiceStub, ScrapeSpec, StartScrapeRequest
from tests.grpc_helpers import bearer, reason, violations
from tests.scraper.site import Site

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1/", "BLOCKED_ADDRESS"),
    ("http://10.1.2.3/", "BLOCKED_ADDRESS"),
    ("http://192.168.0.1/", "BLOCKED_ADDRESS"),
    ("http://169.254.169.254/latest/meta-data/", "BLOCKED_ADDRESS"),
    ("http://[::1]/", "BLOCKED_ADDRESS"),
    ("http://[::ffff:127.0.0.1]/", "BLOCKED_ADDRESS"),
    ("http://[fd00::1]/", "BLOCKED_ADDRESS"),
    ("http://0.0.0.0/", "BLOCKED_ADDRESS"),
    ("file:///etc/passwd", "BLOCKED_SCHEME"),
    ("ftp://example.com/", "BLOCKED_SCHEME"),
    ("gopher://example.com/", "BLOCKED_SCHEME"),
])
def test_policy_refuses_non_public_destinations(url: str, expected: str) -> None:
    with pytest.raises(Refusal) as refused:
        AddressPolicy().check_url(URL(url))
    assert refused.value.reason == expected


def test_allow_list_opens_hosts_ports_and_networks() -> None:
    policy = AddressPolicy.from_entries(["127.0.0.1:8080", "internal.example", "10.0.0.0/8"])
    policy.check_url(URL("http://127.0.0.1:8080/"))
    policy.check_url(URL("http://internal.example/"))
    policy.check_url(URL("http://10.9.8.7/"))
    policy.check_url(URL("https://93.184.215.14/"))  # public addresses need no entry
    with pytest.raises(Refusal):
        policy.check_url(URL("http://127.0.0.1:8081/"))  # another port on the same host is not opened
    assert policy.address_allowed(ipaddress.ip_address("10.0.0.1"))
    assert not policy.address_allowed(ipaddress.ip_address("11.0.0.1"))


async def test_resolver_refuses_names_that_resolve_to_loopback() -> None:
    resolver = GuardedResolver(AddressPolicy())
    try:
        with pytest.raises(Refusal) as refused:
            await resolver.resolve("localhost", 80)
        assert refused.value.metadata["kind"] == "loopback"
        allowed = GuardedResolver(AddressPolicy.from_entries(["localhost"]))
        assert await allowed.resolve("localhost", 80)
        await allowed.close()
    finally:
        await resolver.close()


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:{port}/", "BLOCKED_ADDRESS"),
    ("http://localhost:{port}/", "BLOCKED_ADDRESS"),
    ("http://10.0.0.7/", "BLOCKED_ADDRESS"),
    ("http://169.254.169.254/latest/meta-data/", "BLOCKED_ADDRESS"),
    ("file:///etc/passwd", "BLOCKED_SCHEME"),
])
async def test_start_scrape_refuses_blocked_seeds(channel: Channel, token: str, site: Site, url: str,
                                                  expected: str) -> None:
    # The app may fetch 127.0.0.1 on the site's port only (see conftest): another port is still refused.
    url = url.format(port=site.port + 1 if site.port < 65535 else site.port - 1)
    with pytest.raises(GRPCError) as error:
        await ScraperServiceStub(channel).start_scrape(StartScrapeRequest(spec=ScrapeSpec(urls=[url])), timeout=10,
                                                       metadata=bearer(token))
    assert error.value.status == Status.PERMISSION_DENIED
    assert reason(error.value) == expected
    assert error.value.message


async def test_a_redirect_to_loopback_is_refused_mid_crawl(channel: Channel, token: str, site: Site) -> None:
    events = [r.event async for r in ScraperServiceStub(channel).scrape(
        ScrapeRequest(spec=ScrapeSpec(urls=[site.url("/to-loopback")])), timeout=30, metadata=bearer(token))]
    (failure,) = [e.page_failed for e in events if e.page_failed is not None]
    assert failure.url == site.url("/to-loopback")
    assert failure.failure.reason == "BLOCKED_ADDRESS"
    assert "loopback" in failure.failure.message
    assert "/page/0/0" not in site.paths()  # the redirect target was never requested


async def test_refusals_are_audited(app: App, channel: Channel, token: str, site: Site) -> None:
    with pytest.raises(GRPCError):
        await ScraperServiceStub(channel).start_scrape(
            StartScrapeRequest(spec=ScrapeSpec(urls=["http://169.254.169.254/latest/"])), timeout=10,
            metadata=bearer(token))
    [r async for r in ScraperServiceStub(channel).scrape(
        ScrapeRequest(spec=ScrapeSpec(urls=[site.url("/to-loopback")])), timeout=30, metadata=bearer(token))]
    audit = AuditLog(app.redis, retention_seconds=3600, instance="test")
    events, _ = await audit.page(page_size=10, page_token="", kind="fetch.refused")
    assert {(e.fields["reason"], e.fields["address"]) for e in events} == {
        ("BLOCKED_ADDRESS", "169.254.169.254"), ("BLOCKED_ADDRESS", "127.0.0.1")}
    assert all(e.session_id for e in events)


# -- hosts in every form reach the same policy decision ------------------------------------

#: Loopback spelled the ways a URL parser (and inet_aton) accepts besides the dotted quad.
NON_CANONICAL_LOOPBACK = ("127.1", "2130706433", "0x7f.1", "017700000001", "0x7F000001", "0177.0.0.1")


@pytest.mark.parametrize("host", NON_CANONICAL_LOOPBACK)
def test_non_canonical_ipv4_hosts_are_read_as_the_address_they_name(host: str) -> None:
    assert canonical_host(host) == "127.0.0.1"
    with pytest.raises(Refusal) as refused:
        AddressPolicy().check_url(URL(f"http://{host}/"))
    assert (refused.value.reason, refused.value.metadata["address"]) == ("BLOCKED_ADDRESS", "127.0.0.1")


@pytest.mark.parametrize(("host", "canonical"), [
    ("Example.COM", "example.com"), ("93.184.215.14", "93.184.215.14"), ("1.2.3.4.example", "1.2.3.4.example"),
    ("0x.example", "0x.example"), ("::1", "::1"), ("[::1]", "::1"), ("08.1", "08.1"),
])
def test_other_hosts_keep_their_name(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a." * 127 + "example", "a..example"])
def test_hosts_that_are_no_dns_name_are_invalid_arguments(host: str) -> None:
    with pytest.raises(InvalidArgument) as invalid:
        AddressPolicy().check_url(URL(f"http://{host}/"))
    assert invalid.value.reason == "INVALID_HOST"


async def test_a_host_label_over_63_characters_is_invalid_argument(channel: Channel, token: str) -> None:
    url = f"http://{'a' * 300}.localhost/"
    for call in (
        lambda: ScraperServiceStub(channel).start_scrape(StartScrapeRequest(spec=ScrapeSpec(urls=[url])),
                                                         timeout=10, metadata=bearer(token)),
        lambda: _drain(ScraperServiceStub(channel).scrape(ScrapeRequest(spec=ScrapeSpec(urls=[url])), timeout=10,
                                                          metadata=bearer(token))),
    ):
        with pytest.raises(GRPCError) as error:
            await call()
        assert error.value.status == Status.INVALID_ARGUMENT
        assert "spec.urls[0]" in violations(error.value)


async def _drain(responses: AsyncIterator[object]) -> None:
    async for _ in responses:
        pass


@pytest.mark.parametrize("host", NON_CANONICAL_LOOPBACK)
async def test_a_redirect_to_a_non_canonical_loopback_host_is_blocked(
    app: App, channel: Channel, token: str, site: Site, host: str
) -> None:
    # Another port than the allowed one: the canonical form of the host is loopback, and refused.
    target = f"http://{host}:{site.port + 1}/page/0/0"
    events = [r.event async for r in ScraperServiceStub(channel).scrape(
        ScrapeRequest(spec=ScrapeSpec(urls=[site.url(f"/go?to={target}")])), timeout=30, metadata=bearer(token))]
    (failure,) = [e.page_failed for e in events if e.page_failed is not None]
    assert failure.failure.reason == "BLOCKED_ADDRESS"
    assert "loopback" in failure.failure.message


async def test_links_to_non_canonical_loopback_hosts_are_blocked_not_breakers(
    app: App, channel: Channel, token: str, site: Site
) -> None:
    links = "&".join(f"to=http://{host}:{site.port + 1}/x" for host in NON_CANONICAL_LOOPBACK)
    events = [r.event async for r in ScraperServiceStub(channel).scrape(
        ScrapeRequest(spec=ScrapeSpec(urls=[site.url(f"/links?{links}")], max_depth=1, same_site_only=False)),
        timeout=30, metadata=bearer(token))]
    failures = {e.page_failed.url: e.page_failed.failure.reason for e in events if e.page_failed is not None}
    skipped = [e.page_skipped for e in events if e.page_skipped is not None]
    # Every spelling is the one destination 127.0.0.1:<port+1>, considered once and refused.
    assert failures == {f"http://127.0.0.1:{site.port + 1}/x": "BLOCKED_ADDRESS"}
    assert not [s for s in skipped if s.reason == "ROBOTS_DISALLOWED"]


async def test_refused_redirects_open_no_circuit_breaker(site: Site) -> None:
    policy = AddressPolicy.from_entries([f"127.0.0.1:{site.port}"])
    limits = FetchLimits(host_failures=2, retries=0, timeout_seconds=2)
    async with open_http_session(policy, limits) as http:
        fetcher = Fetcher(http, policy, limits)
        try:
            for _ in range(3):
                for host in NON_CANONICAL_LOOPBACK:
                    with pytest.raises(Refusal):
                        await fetcher.fetch(URL(site.url(f"/go?to=http://{host}:{site.port + 1}/")))
            assert fetcher.breakers.open_count == 0
            assert (await fetcher.fetch(URL(site.url("/page/0/0")))).status == 200
        finally:
            await fetcher.aclose()
