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

Every policy decision is made on the host's canonical form
(:func:`canonical_host`): the IPv4 spellings a URL parser or ``inet_aton``
accepts besides the dotted quad (``127.1``, ``2130706433``, ``0x7f.1``,
``017700000001``) are read as the address they name, so a redirect or a link to
one is refused like the dotted quad (BLOCKED_ADDRESS), not left to the
connection to fail. A host that is no DNS name (a label over 63 characters, an
empty label, over 253 characters) is INVALID_ARGUMENT (``INVALID_HOST``).

An allow-list opens specific destinations: ``host``, ``host:port`` or an
address network in CIDR form (``10.1.0.0/16``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from daveloper.errors import InvalidArgument, PermissionDenied

__all__ = ["AddressPolicy", "GuardedResolver", "Refusal", "canonical_host", "normalise_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})


class Refusal(PermissionDenied):
    """A destination the policy does not allow; ``reason`` says which rule refused it."""


#: One part of an IPv4 host as the WHATWG URL standard (and inet_aton) reads it: hex, octal or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_MAX_LABEL = 63
_MAX_NAME = 253


def _invalid_host(host: str, problem: str) -> InvalidArgument:
    shown = host if len(host) <= 80 else f"{host[:60]}...({len(host)} characters)"
    return InvalidArgument(f"{shown} is not a valid host: {problem}", reason="INVALID_HOST",
                           violations=[("url", f"the host {problem}")], metadata={"host": host[:200]})


def _ipv4_number(host: str) -> ipaddress.IPv4Address | None:
    """The address a numeric host names (``127.1``, ``0x7f.1``, ``2130706433``); None for a name.

    A host whose parts are all numbers but that names no address (``256.1.1.1``,
    ``4294967296``) is no host at all: INVALID_ARGUMENT.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing dot
    if not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    if len(parts) > 4:
        raise _invalid_host(host, "has more than four numeric parts")
    numbers = [int(p[2:] or "0", 16) if p[:2].lower() == "0x" else int(p, 8) if p[0] == "0" else int(p)
               for p in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise _invalid_host(host, "is a number out of the IPv4 range")
    return ipaddress.IPv4Address(sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last)


def canonical_host(host: str) -> str:
    """The form of ``host`` every policy decision is made on.

    Lower case, no IPv6 brackets, and an IPv4 address in dotted-quad form
    however it was spelled. Raises INVALID_ARGUMENT (``INVALID_HOST``) for a
    numeric host that names no address.
    """
    host = host.strip("[]").lower()
    if ":" in host:
        return host  # an IPv6 literal
    address = _ipv4_number(host)
    return str(address) if address is not None else host


def _check_dns_name(host: str) -> None:
    """Refuse a host name DNS cannot carry (what idna and the resolver would fail on later, as INTERNAL)."""
    name = host[:-1] if host.endswith(".") else host
    for label in name.split("."):
        if not label:
            raise _invalid_host(host, "has an empty label")
        if len(label) > _MAX_LABEL:
            raise _invalid_host(host, f"has a label longer than {_MAX_LABEL} characters")
    if len(name) > _MAX_NAME:
        raise _invalid_host(host, f"is longer than {_MAX_NAME} characters")


def normalise_url(url: URL) -> URL:
    """``url`` with its host in :func:`canonical_host` form; INVALID_ARGUMENT when the host is not a valid one.

    Applied to start URLs, every redirect target and every link before the URL
    is compared, counted per host or fetched.
    """
    raw = url.raw_host
    if not raw:
        return url
    if ":" not in raw:
        _check_dns_name(raw)
    host = canonical_host(raw)
    return url if host == raw else url.with_host(host)


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
        if not url.raw_host:
            raise Refusal("the URL has no host", reason="BLOCKED_SCHEME", metadata={"url": str(url)[:200]})
        host = canonical_host(normalise_url(url).raw_host or "")
        if self.host_allowed(host, url.port):
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        self.check_address(host, address)

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
