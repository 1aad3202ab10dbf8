"""SSRF refusals: by scheme, by resolved address, on redirects; the allow-list opens exactly what it names."""

from __future__ import annotations

import ipaddress

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from yarl import URL

from daveloper.app import App
from daveloper.audit import AuditLog
from daveloper.scraper.safety import AddressPolicy, GuardedResolver, Refusal
from generated.daveloper.v1 import ScrapeRequest, ScraperServiceStub, ScrapeSpec, StartScrapeRequest
from tests.grpc_helpers import bearer, reason
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
