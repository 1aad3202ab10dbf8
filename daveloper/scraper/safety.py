"""Outbound fetch safety: the scraper must not become a way into the network it runs in.

A URL is refused unless its scheme is http(s) and every address its host
resolves to is public: loopback, private (RFC 1918, ULA), link-local (which
holds the cloud metadata endpoint 169.254.169.254), multicast, reserved and
unspecified addresses are all refused, including IPv4 addresses mapped into
IPv6. The check runs after DNS resolution, inside the HTTP client's resolver
(:class:`GuardedResolver`), so the address that is checked is the address
that is connected to — a host cannot resolve to a public address for the check
and to a private one for the connection. Redirects are followed by the
fetcher one hop at a time, so each hop passes through the same check.

An allow-list opens specific destinations: ``host``, ``host:port`` or an
address network in CIDR form (``10.1.0.0/16``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from daveloper.errors import PermissionDenied

__all__ = ["AddressPolicy", "GuardedResolver", "Refusal"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})


class Refusal(PermissionDenied):
    """A destination the policy does not allow; ``reason`` says which rule refused it."""


def _blocked_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which destinations outbound fetches may reach."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        """Build from allow-list entries: ``host``, ``host:port`` or ``CIDR``."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.strip("[]") if entry.count(":") > 1 else entry)
        return cls(frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str, port: int | None) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        return host in self.allowed_hosts or f"{host}:{port}" in self.allowed_hosts

    def address_allowed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)

    def check_url(self, url: URL) -> None:
        """Refuse a URL by its scheme, or by its host when that is an address literal.

        Host names are checked once resolved, by :class:`GuardedResolver`.
        """
        if url.scheme not in SCHEMES:
            raise Refusal(f"only http and https URLs may be fetched, not {url.scheme or 'a relative'} URL",
                          reason="BLOCKED_SCHEME", metadata={"url": str(url)[:200]})
        if not url.host:
            raise Refusal("the URL has no host", reason="BLOCKED_SCHEME", metadata={"url": str(url)[:200]})
        if self.host_allowed(url.host, url.port):
            return
        try:
            address = ipaddress.ip_address(url.host.strip("[]"))
        except ValueError:
            return
        self.check_address(url.host, address)

    def check_address(self, host: str, address: IPAddress) -> None:
        if self.address_allowed(address):
            return
        if (kind := _blocked_kind(address)) is not None:
            raise Refusal(f"{host} resolves to a {kind} address ({address}), which the scraper does not fetch",
                          reason="BLOCKED_ADDRESS", metadata={"host": host, "address": str(address), "kind": kind})


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses addresses the policy blocks.

    When any address of a host is blocked the whole host is refused: a name that
    mixes public and private addresses is a rebinding attempt, not a website.
    """

    def __init__(self, policy: AddressPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if self._policy.host_allowed(host, port):
            return results
        for result in results:
            self._policy.check_address(host, ipaddress.ip_address(result["host"]))
        return results

    async def close(self) -> None:
        await self._resolver.close()


def refusal_reason(error: BaseException) -> Refusal | None:
    """The :class:`Refusal` behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = error
    while current is not None and id(current) not in seen:
        if isinstance(current, Refusal):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
