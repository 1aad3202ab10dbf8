"""Connection admission for the listeners: a deadline for a request's start, a cap per client address.

Neither aiohttp nor grpclib bounds how long a new connection may take to send
its request headers (HTTP/1.1) or its HTTP/2 preface: 200 connections each
holding a half-sent request were all still open 20 s later, each costing a
socket and a file descriptor. :class:`ConnectionGuard` wraps a listener's
protocol factory. Every connection it accepts must complete its opening
(:class:`RequestStart` for HTTP/1.1: the blank line that ends the first
request's headers; :class:`Http2Preface` for gRPC: the client preface) within
``header_seconds`` or it is aborted; one client address may hold at most
``per_address`` connections on the listener (more are aborted on arrival);
and on gRPC no header block may exceed 64 KiB (see :class:`Http2Preface`).

Only the opening is timed: an idle HTTP/1.1 keep-alive connection is aiohttp's
keep-alive timeout's business, and an idle gRPC channel (preface sent, no call
yet) is legitimate.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from grpclib.server import Server

from daveloper.rpc import grpclib_compat

__all__ = ["ConnectionGuard", "Http2Preface", "Opening", "Refused", "RequestStart", "guard_server"]

log = logging.getLogger("daveloper.rpc")

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Refused(Exception):
    """A connection broke a bound in what it sent: it is closed before those bytes are handled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Opening(Protocol):
    """Tells when a connection has sent the opening it is timed on."""

    #: Whether to keep seeing the connection's bytes once the opening is complete.
    watching: bool

    @property
    def unfinished(self) -> bool:
        """Once opened and still watching: whether a request's headers are begun and not complete."""
        ...

    def feed(self, data: bytes) -> bool:
        """Account for ``data``; whether the opening is complete. Raises :class:`Refused` to close the connection."""
        ...


class RequestStart:
    """An HTTP/1.1 request's headers end with an empty line (CRLF CRLF)."""

    __slots__ = ("_tail",)
    watching = False
    unfinished = False

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bool:
        seen = self._tail + data
        self._tail = seen[-3:]  # the marker may straddle two reads
        return b"\r\n\r\n" in seen


class Http2Preface:
    """The HTTP/2 client preface (24 fixed bytes) opens; every header block after it is bounded.

    h2 decodes a header block (HEADERS and its CONTINUATION frames) only once it
    is complete, in pure Python: a 1 MiB Huffman-coded header value stalled the
    event loop for a third of a second per request, before any check of ours
    could see it. This reads only the 9-byte frame headers as the bytes go by
    and refuses a block larger than ``max_header_block`` before h2 has it all.
    gRPC clients keep metadata far smaller (8 KiB is grpc-core's default limit).
    """

    __slots__ = ("_block", "_frame_header", "_in_headers", "_max", "_preface_left", "_skip")
    watching = True

    def __init__(self, max_header_block: int = 64 * 1024) -> None:
        self._max = max_header_block
        self._preface_left = len(_H2_PREFACE)
        self._frame_header = bytearray()
        self._skip = 0  # payload bytes of the current frame still to come
        self._block = 0  # bytes of the header block being received
        self._in_headers = False  # a header block is begun and not complete

    def feed(self, data: bytes) -> bool:
        pos, end = 0, len(data)
        if self._preface_left:
            pos = min(self._preface_left, end)
            self._preface_left -= pos
            if self._preface_left:
                return False
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip and not self._block:  # the END_HEADERS frame is all in
                    self._in_headers = False
                continue
            need = 9 - len(self._frame_header)
            self._frame_header += data[pos:pos + need]
            pos += need
            if len(self._frame_header) < 9:
                break
            length = int.from_bytes(self._frame_header[:3], "big")
            kind, flags = self._frame_header[3], self._frame_header[4]
            self._frame_header.clear()
            if kind in (0x1, 0x9):  # HEADERS, CONTINUATION
                self._block += length
                if self._block > self._max:
                    raise Refused("header_block_too_large")
                self._in_headers = True  # until the END_HEADERS frame's payload is in
                if flags & 0x4:  # END_HEADERS
                    self._block = 0
            self._skip = length
            if not self._skip and not self._block:
                self._in_headers = False
        return True

    @property
    def unfinished(self) -> bool:
        return self._in_headers or bool(self._frame_header)  # a header block, or a frame's own header


class ConnectionGuard:
    """Wraps protocol factories of one listener; see the module docstring.

    ``header_seconds`` or ``per_address`` of 0 turn that bound off; addresses in the ``shared``
    networks (trusted proxies, whose one address stands for many clients) have no per-address cap.
    ``on_refused(reason)`` is called for every connection closed by a bound
    (``"slow_opening"``, ``"per_address"``, ``"header_block_too_large"``), e.g. to count it in metrics.
    """

    def __init__(self, *, header_seconds: float, per_address: int, opening: Callable[[], Opening],
                 on_refused: Callable[[str], None] | None = None, shared: Sequence[str] = ()) -> None:
        self.header_seconds = header_seconds
        self.per_address = per_address
        # Addresses many clients share (trusted proxies): a cap per address would cap them all.
        self._shared = [ipaddress.ip_network(entry, strict=False) for entry in shared]
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

    def _is_shared(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._shared)

    def _admit(self, address: str) -> bool:
        if self.per_address and self._open[address] >= self.per_address and not self._is_shared(address):
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


def guard_server(srv: Server, *, header_seconds: float, per_address: int,
                 on_refused: Callable[[str], None] | None = None, shared: Sequence[str] = ()) -> ConnectionGuard:
    """Admit the connections of a grpclib server (before its ``start``) through a guard with :class:`Http2Preface`."""
    guard = ConnectionGuard(header_seconds=header_seconds, per_address=per_address, opening=Http2Preface,
                            on_refused=on_refused, shared=shared)
    grpclib_compat.wrap_protocol_factory(srv, guard.wrap)
    return guard


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
        if self._opening is not None:
            try:
                opened = self._opening.feed(data)
            except Refused as refused:
                self._opening = None
                if self._transport is not None:
                    self._guard._refuse(refused.reason, self._address)
                    self._transport.abort()  # before the inner protocol sees these bytes
                return
            if opened:
                # Past the opening, a header block begun and left unfinished is timed the same way
                # (h2 would hold it, and its stream, for ever).
                pending = self._opening.watching and self._opening.unfinished
                if not self._opening.watching:
                    self._opening = None
                if pending and self._timer is None and self._guard.header_seconds > 0:
                    self._timer = asyncio.get_running_loop().call_later(self._guard.header_seconds, self._too_slow)
                elif not pending and self._timer is not None:
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
