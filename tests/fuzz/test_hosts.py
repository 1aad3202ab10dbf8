"""Hostile hosts at the scraper's address policy: every spelling of a blocked address is refused as one.

An IPv4 address has many spellings that resolvers and browsers accept (``127.1``,
``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.01``, a trailing dot, upper-case hex): each
must be refused ``BLOCKED_ADDRESS`` like its dotted-quad form, never reach a fetch or
a circuit breaker. Host names DNS cannot carry (a label over 63 characters, a name
over 253) are ``INVALID_ARGUMENT`` (``INVALID_HOST``), never an idna error. The same
checks run on start URLs, redirects and links (tests/scraper/test_safety.py drives
those paths with a live crawl); this drives the policy much harder.
"""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from daveloper.errors import InvalidArgument
from daveloper.scraper.safety import AddressPolicy, Refusal
from tests.fuzz.budget import bounded, fuzz

POLICY = AddressPolicy.from_entries([])

#: Networks the scraper never fetches from, and an address in each to spell.
BLOCKED = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16",
                                             "172.16.0.0/12", "0.0.0.0/8", "100.64.0.0/10")]

blocked_addresses = st.sampled_from(BLOCKED).flatmap(
    lambda network: st.integers(int(network.network_address), int(network.broadcast_address)))


def _number(value: int, style: str) -> str:
    return {"decimal": str(value), "hex": f"0x{value:x}", "HEX": f"0X{value:X}", "octal": f"0{value:o}"}[style]


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, int]:
    """An address in blocked space, spelled as 1 to 4 numeric parts, each decimal, hex or octal."""
    value = draw(blocked_addresses)
    parts = draw(st.integers(1, 4))
    octets = list(value.to_bytes(4, "big"))
    head, rest = octets[:parts - 1], octets[parts - 1:]
    numbers = [*head, int.from_bytes(bytes(rest), "big")]
    styles = draw(st.lists(st.sampled_from(["decimal", "hex", "HEX", "octal"]), min_size=parts, max_size=parts))
    host = ".".join(_number(n, s) for n, s in zip(numbers, styles, strict=True))
    if draw(st.booleans()):
        host += "."
    return host, value


@fuzz(examples=300)
@given(spellings(), st.sampled_from(["http", "https"]), st.sampled_from(["", ":80", ":8080"]))
def test_every_spelling_of_a_blocked_address_is_blocked(spelled: tuple[str, int], scheme: str, port: str) -> None:
    host, value = spelled
    with bounded("hosts"), pytest.raises(Refusal) as refused:
        POLICY.check_url(URL(f"{scheme}://{host}{port}/path"))
    assert refused.value.reason == "BLOCKED_ADDRESS", host
    assert refused.value.metadata["address"] == str(ipaddress.IPv4Address(value)), host


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@fuzz(examples=200)
@given(st.lists(labels, max_size=3), st.integers(64, 5000), st.lists(labels, min_size=1, max_size=3))
def test_a_host_label_over_63_characters_is_invalid_argument(before: list[str], length: int,
                                                              after: list[str]) -> None:
    host = ".".join([*before, "a" * length, *after])
    with bounded("hosts"), pytest.raises(InvalidArgument) as invalid:
        POLICY.check_url(URL(f"http://{host}/"))
    assert invalid.value.reason == "INVALID_HOST"


@fuzz(examples=200)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=6))
def test_numeric_hosts_name_an_address_or_are_invalid(numbers: list[int]) -> None:
    # Out of range (256.1.1.1, 4294967296) or too many parts: INVALID_ARGUMENT, never another exception.
    host = ".".join(map(str, numbers))
    with bounded("hosts"), contextlib.suppress(Refusal, InvalidArgument):
        POLICY.check_url(URL(f"http://{host}/"))
