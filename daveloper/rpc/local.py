"""In-process calls: a grpclib ``Channel`` whose calls are served by a ``Server`` of the same process.

The edge in front of its own process's gRPC server used to reach it over a
loopback HTTP/2 connection: every event was framed, flow-controlled and written
by the server's h2 stack, then read back, parsed and acknowledged by the edge's
— about twice the server's own cost of sending it to a native client.
:class:`LocalChannel` hands each call straight to the server's request handler
instead. Both sides keep grpclib's own client and server ``Stream`` objects, so
the interceptor (authentication metadata, request ids, the message-size cap,
drain), deadlines, cancellation, trailers-only errors and status details behave
as over a socket; what is skipped is HTTP/2 itself: HPACK, frames, flow-control
bookkeeping and the socket.

Between the two ``Stream`` objects, a call is a pair of byte pipes carrying the
gRPC length-prefixed messages, and headers handed over as lists. A pipe holds at
most :data:`WINDOW` unread bytes before its writer waits (HTTP/2's default
window), so a slow reader slows its writer as on the network. A reset from
either side ends the call for both, as RST_STREAM does; a handler that ends
without trailers resets its call, so no client waits for a status that will
not come.

The ends implement the part of ``grpclib.protocol.Stream`` that grpclib's
``client.Stream``, ``server.Stream`` and ``server.request_handler`` use
(grpclib is pinned; ``tests/rpc/test_local.py`` runs every kind of call through
both transports and compares what the client sees).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from grpclib import server as grpclib_server
from grpclib.client import Channel
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import StreamTerminatedError
from grpclib.utils import Wrapper
from h2.exceptions import StreamClosedError

from daveloper.rpc import grpclib_compat

__all__ = ["WINDOW", "LocalChannel"]

#: Unread bytes a pipe holds before its writer waits (HTTP/2's default stream window).
WINDOW = 65_535

_Headers = list[tuple[str, str]]
#: What grpclib reports for a stream its peer reset (``protocol.EventsProcessor.process_stream_reset``).
_RESET = "Stream reset by remote party, error_code: 0"


class _Peer:
    """What a local call's ``stream.peer`` reports: loopback, like a client on this host."""

    __slots__ = ()

    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", 0)

    def cert(self) -> None:
        return None


_PEER = _Peer()


class _Connection:
    """The connection-level counters and peer grpclib's ``Stream`` objects read and update."""

    def __init__(self, channel: LocalChannel | None = None) -> None:
        self._channel = channel
        self.messages_sent = 0
        self.messages_received = 0
        self.last_message_sent: float | None = None
        self.last_message_received: float | None = None

    def get_peer(self) -> _Peer:
        return _PEER

    def create_stream(self, *, wrapper: Wrapper | None = None) -> _ClientEnd:
        """A new call's client end (``client.Stream.send_request`` asks for it)."""
        assert self._channel is not None
        return _ClientEnd(self._channel, wrapper)


class _Transport:
    """Answers ``is_closing()``, which grpclib's streams ask before finishing a call."""

    __slots__ = ("closing",)

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Pipe:
    """One direction of a call: length-prefixed messages as bytes, at most :data:`WINDOW` of them unread."""

    __slots__ = ("_chunks", "_eof", "_readable", "_size", "_writable", "broken")

    def __init__(self) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._eof = False
        self.broken = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def write(self, data: bytes) -> None:
        while self._size >= WINDOW and not self.broken:
            self._writable.clear()
            await self._writable.wait()
        if self.broken or self._eof:
            raise StreamClosedError(1)
        if data:
            self._chunks.append(memoryview(data))
            self._size += len(data)
            self._readable.set()

    def end(self) -> None:
        self._eof = True
        self._readable.set()

    def abort(self) -> None:
        """The call was reset: writers stop waiting (and fail), readers stop waiting (and fail)."""
        self.broken = True
        self._readable.set()
        self._writable.set()

    async def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or ``b""`` at the end of the stream (grpclib's ``Buffer.read``)."""
        if size == 0:
            return b""
        while self._size < size:
            if self.broken:
                raise StreamTerminatedError("Stream reset")
            if self._eof:
                if self._size == 0:
                    return b""
                raise AssertionError("Received less data than expected")
            self._readable.clear()
            await self._readable.wait()
        parts: list[memoryview] = []
        wanted = size
        while wanted:
            chunk = self._chunks[0]
            if len(chunk) <= wanted:
                parts.append(self._chunks.popleft())
                wanted -= len(chunk)
            else:
                parts.append(chunk[:wanted])
                self._chunks[0] = chunk[wanted:]
                wanted = 0
        self._size -= size
        if self._size < WINDOW:
            self._writable.set()
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)


class _End:
    """One side of a local call, as grpclib's streams see an HTTP/2 stream."""

    id: int | None = 1
    peer_end: _End

    def __init__(self, connection: _Connection, transport: _Transport, inbound: _Pipe, outbound: _Pipe,
                 wrapper: Wrapper | None) -> None:
        self.connection = connection
        self._transport = transport
        self._inbound = inbound
        self._outbound = outbound
        self.wrapper = wrapper
        self.headers: _Headers | None = None
        self.trailers: _Headers | None = None
        self.headers_received = asyncio.Event()
        self.trailers_received = asyncio.Event()
        #: Each side half-closes (END_STREAM); the call is over when both have, or on a reset.
        self.ended = False
        self.reset_done = False

    @property
    def closable(self) -> bool:
        return not (self._transport.closing or self.reset_done or (self.ended and self.peer_end.ended))

    async def recv_headers(self) -> _Headers:
        if self.headers is None:
            await self.headers_received.wait()
        assert self.headers is not None
        return self.headers

    async def recv_trailers(self) -> _Headers:
        if self.trailers is None:
            await self.trailers_received.wait()
        assert self.trailers is not None
        return self.trailers

    async def recv_data(self, size: int) -> bytes:
        return await self._inbound.read(size)

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self.ended or self.reset_done:
            raise StreamClosedError(1)
        await self._outbound.write(data)
        if end_stream:
            self._end()

    async def send_headers(self, headers: _Headers, end_stream: bool = False) -> None:
        if self.ended or self.reset_done:
            raise StreamClosedError(1)
        self.peer_end._receive_headers(headers)
        if end_stream:
            self._end()

    async def end(self) -> None:
        if self.ended or self.reset_done:
            raise StreamClosedError(1)
        self._end()

    async def reset(self, error_code: Any = None) -> None:
        self.reset_nowait()

    def reset_nowait(self, error_code: Any = None) -> None:
        if self.reset_done:
            return
        self._break()
        self.peer_end._break()
        self.peer_end._reset_by_peer()

    def _end(self) -> None:
        self.ended = True
        self._outbound.end()

    def _break(self) -> None:
        self.reset_done = True
        self._inbound.abort()
        self._outbound.abort()

    def _receive_headers(self, headers: _Headers) -> None:
        if self.headers is None:
            self.headers = headers
            self.headers_received.set()
        else:
            self.trailers = headers
            self.trailers_received.set()

    def _reset_by_peer(self) -> None:
        self.__terminated__(_RESET)

    def __terminated__(self, reason: str) -> None:
        if self.wrapper is not None:
            self.wrapper.cancel(StreamTerminatedError(reason))


class _ServerEnd(_End):
    def __init__(self, client: _ClientEnd, handler: grpclib_server.Handler) -> None:
        super().__init__(_Connection(), client._transport, client._outbound, client._inbound, None)
        self.peer_end = client
        self._handler = handler
        self.released = False

    def reset_nowait(self, error_code: Any = None) -> None:
        if self.ended and not self.reset_done:
            # After its trailers (grpclib resets a failed call whose client has not half-closed).
            # Over HTTP/2 the reset reaches the client a network hop after the trailers, so the
            # client has woken up for them by then: it fails its next step, and its sending stops,
            # but no task of it is cancelled. A cancel here would reach a task still waiting and
            # leave its cancel count raised, which turns its own later timeout into a cancel.
            self.reset_done = self.peer_end.reset_done = True
            self._inbound.abort()
            if self.peer_end.wrapper is not None:
                grpclib_compat.fail_next_step(self.peer_end.wrapper, StreamTerminatedError(_RESET))
            return
        super().reset_nowait(error_code)

    def release(self) -> None:
        """grpclib's request handler is done with the call: one that sent no status resets it."""
        self.released = True
        if not (self.ended or self.reset_done):
            self.reset_nowait()

    def _reset_by_peer(self) -> None:
        super()._reset_by_peer()
        if not self.released:  # as grpclib's protocol does on RST_STREAM: the handler is cancelled
            self._handler.cancel(self)  # type: ignore[arg-type]  # it serves as grpclib's protocol stream


class _ClientEnd(_End):
    def __init__(self, channel: LocalChannel, wrapper: Wrapper | None) -> None:
        super().__init__(channel.connection, channel.transport, _Pipe(), _Pipe(), wrapper)
        self._channel = channel

    async def send_request(self, headers: _Headers, end_stream: bool = False, *,
                           _processor: Any = None) -> Callable[[], None]:
        handler = self._channel.handler()
        server_end = _ServerEnd(self, handler)
        self.peer_end = server_end
        if end_stream:
            self._end()
        handler.accept(server_end, headers, server_end.release)  # type: ignore[arg-type]  # as above
        return _release_nothing


def _release_nothing() -> None:
    pass


class _LocalProtocol:
    """What ``Channel.__connect__`` returns: grpclib reads ``processor.connection`` of it."""

    def __init__(self, connection: _Connection) -> None:
        self.processor = self
        self.connection = connection


class LocalChannel(Channel):
    """A grpclib ``Channel`` to ``server``, a started grpclib ``Server`` of this process.

    Use it as any channel (``request``, generated stubs, ``close``). Calls made
    after the server closed fail with :class:`ConnectionRefusedError`, as a
    closed listener refuses a connection.
    """

    def __init__(self, server: grpclib_server.Server, *, codec: CodecBase | None = None,
                 status_details_codec: StatusDetailsCodecBase | None = None) -> None:
        super().__init__("localhost", 0, codec=codec, status_details_codec=status_details_codec)
        self._server = server
        self._handler: grpclib_server.Handler | None = None
        self._closed = False
        self.connection = _Connection(self)
        self.transport = _Transport()
        self._local = _LocalProtocol(self.connection)

    def handler(self) -> grpclib_server.Handler:
        """The grpclib request handler this channel's calls run in, registered with the server."""
        if self._closed or (self._handler is not None and self._handler.closing):
            raise ConnectionRefusedError("the in-process gRPC server is closed")
        if self._handler is None:
            self._handler = grpclib_compat.new_handler(self._server)
        return self._handler

    async def __connect__(self) -> Any:
        if self._closed or grpclib_compat.server_closed(self._server):
            raise ConnectionRefusedError("the in-process gRPC server is closed")
        return self._local

    def close(self) -> None:
        """Refuse new calls; calls in progress finish (the server's close ends them)."""
        self._closed = True
