"""Connection admission for the listeners: a deadline for a request's start, a cap per client address.

Neither aiohttp nor grpclib bounds how long a new connection may take to send
its request headers (HTTP/1.1) or its HTTP/2 preface: 200 connections each
holding a half-sent request were all still open 20 s later, each costing a
socket and a file descriptor. :class:`ConnectionGuard` wraps a listener's
protocol factory. Every connection it accepts must complete its opening
(:class:`RequestStart` for HTTP/1.1: the blank line that ends the first
request's headers; :class:`Http2Preface` for gRPC: the client preface) within
``header_seconds`` or it is aborted; and one client address may hold at most
``per_address`` connections on the listener (more are aborted on arrival).

Only the opening is timed: an idle HTTP/1.1 keep-alive connection is aiohttp's
keep-alive timeout's business, and an idle gRPC channel (preface sent, no call
yet) is legitimate.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

__all__ = ["ConnectionGuard", "Http2Preface", "Opening", "RequestStart"]

log = logging.getLogger("daveloper.rpc")

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Opening(Protocol):
    """Tells when a connection has sent the opening it is timed on."""

    def feed(self, data: bytes) -> bool:
        """Account for ``data``; whether the opening is now complete."""
        ...


class RequestStart:
    """An HTTP/1.1 request's headers end with an empty line (CRLF CRLF)."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bool:
        seen = self._tail + data
        self._tail = seen[-3:]  # the marker may straddle two reads
        return b"\r\n\r\n" in seen


class Http2Preface:
    """The HTTP/2 client connection preface, 24 fixed bytes."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    def feed(self, data: bytes) -> bool:
        self._count += len(data)
        return self._count >= len(_H2_PREFACE)


class ConnectionGuard:
    """Wraps protocol factories of one listener; see the module docstring.

    ``header_seconds`` or ``per_address`` of 0 turn that bound off.
    ``on_refused(reason)`` is called for every connection closed by a bound
    (``"slow_opening"`` or ``"per_address"``), e.g. to count it in metrics.
    """

    def __init__(self, *, header_seconds: float, per_address: int, opening: Callable[[], Opening],
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.header_seconds = header_seconds
        self.per_address = per_address
        self._opening = opening
        self._on_refused = on_refused
        self._open: collections.Counter[str] = collections.Counter()
        #: Connections closed by each bound so far.
        self.refused: collections.Counter[str] = collections.Counter()

    def open_from(self, address: str) -> int:
        """Connections open now from ``address``."""
        return self._open[address]

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose connections are admitted by this guard."""
        return lambda: _Guarded(self, factory)

    def _admit(self, address: str) -> bool:
        if self.per_address and self._open[address] >= self.per_address:
            self._refuse("per_address", address)
            return False
        self._open[address] += 1
        return True

    def _release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def _refuse(self, reason: str, address: str) -> None:
        self.refused[reason] += 1
        if self._on_refused is not None:
            self._on_refused(reason)
        log.info("connection refused", extra={"reason": reason, "client_address": address})


class _Guarded(asyncio.Protocol):
    """A protocol that forwards to the real one once admitted, and times its opening."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], Any]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: Any = None
        self._address = ""
        self._transport: asyncio.Transport | None = None
        self._opening: Opening | None = guard._opening()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        stream = cast(asyncio.Transport, transport)  # a stream listener's (asyncio's, uvloop's, TLS)
        if not self._guard._admit(self._address):
            self._address = ""  # not counted: nothing to release
            stream.abort()
            return
        self._transport = stream
        if self._guard.header_seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(self._guard.header_seconds, self._too_slow)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._guard._refuse("slow_opening", self._address)
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._opening is not None and self._opening.feed(data):
            self._opening = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._guard._release(self._address)
            self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)
