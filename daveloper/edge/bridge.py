"""Upstream calls: every edge stream is one real gRPC stream through grpclib's client.

The edge is an ordinary gRPC client of the servicers (in this process or
another), so deadlines, metadata, auth, cancellation and status behave exactly
as for native clients. Messages pass through as bytes (:class:`RawCodec`) and
error details as the raw ``google.rpc.Status`` (:class:`RawStatusDetailsCodec`;
grpclib's own codec would drop detail types it does not know).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from grpclib.client import Channel, Stream
from grpclib.const import Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import H2Error

from daveloper.config import Address
from daveloper.edge.codec import Method, UnrepresentableMessage
from daveloper.edge.status import RpcStatus, edge_status

__all__ = ["RawCodec", "RawStatusDetailsCodec", "Upstream", "call_status", "end_sending", "status_of", "unary"]

log = logging.getLogger("daveloper.edge")

#: Concurrent streams we put on one HTTP/2 connection before opening another
#: (servers commonly allow 100; staying below keeps ``send_request`` from queueing).
STREAMS_PER_CHANNEL = 90


class RawCodec(CodecBase):
    """Bytes in, bytes out: the edge never decodes a message it only forwards."""

    __content_subtype__ = "proto"  # so the content type stays plain application/grpc

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class RawStatusDetailsCodec(StatusDetailsCodecBase):
    """Keeps ``grpc-status-details-bin`` as the serialized ``google.rpc.Status``."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        return bytes(details)

    def decode(self, status: Status, message: str | None, data: bytes) -> bytes:
        return data


class _PooledChannel:
    __slots__ = ("active", "channel")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.active = 0


class Upstream:
    """A pool of HTTP/2 connections to one gRPC server, grown when the open ones are busy."""

    def __init__(self, addr: Address, *, ssl: ssl.SSLContext | None = None) -> None:
        self.addr = addr
        self._ssl = ssl
        self._pool: list[_PooledChannel] = []

    def _new_channel(self) -> _PooledChannel:
        pooled = _PooledChannel(Channel(self.addr.host, self.addr.port, ssl=self._ssl, codec=RawCodec(),
                                        status_details_codec=RawStatusDetailsCodec()))
        self._pool.append(pooled)
        return pooled

    def _lease(self) -> _PooledChannel:
        pooled = min(self._pool, key=lambda p: p.active, default=None)
        if pooled is None or pooled.active >= STREAMS_PER_CHANNEL:
            pooled = self._new_channel()
        pooled.active += 1
        return pooled

    def open(self, method: Method, *, metadata: list[tuple[str, str | bytes]],
             timeout: float | None) -> UpstreamCall:
        """A call to enter with ``async with``; its stream carries bytes."""
        return UpstreamCall(self, method, metadata, timeout)

    def close(self) -> None:
        for pooled in self._pool:
            pooled.channel.close()
        self._pool.clear()

    @property
    def streams(self) -> int:
        """Upstream streams open now (for tests and metrics)."""
        return sum(p.active for p in self._pool)


class UpstreamCall:
    """``async with`` a grpclib client stream on a pooled channel; returns the channel on exit."""

    def __init__(self, upstream: Upstream, method: Method, metadata: list[tuple[str, str | bytes]],
                 timeout: float | None) -> None:
        self._upstream = upstream
        self._method = method
        self._metadata = metadata
        self._timeout = timeout
        self._pooled: _PooledChannel | None = None
        self._stream: Stream[bytes, bytes] | None = None

    async def __aenter__(self) -> Stream[bytes, bytes]:
        self._pooled = self._upstream._lease()
        self._stream = self._pooled.channel.request(
            self._method.path, self._method.cardinality, bytes, bytes,
            timeout=self._timeout, metadata=self._metadata,
        )
        await self._stream.__aenter__()
        return self._stream

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._pooled is not None
        assert self._stream is not None
        stream = self._stream
        try:
            # Leaving a grpclib stream that has not finished waits for trailers that may
            # never come; on an exception grpclib resets the stream itself, otherwise we do.
            unfinished = not (stream._recv_trailing_metadata_done or stream._cancel_done)  # no public flags
            if stream._send_request_done and unfinished and exc_info[1] is None:
                if stream._stream.closable:
                    await stream.cancel()
                else:  # already closed by the server (e.g. a trailers-only error): nothing to wait for
                    stream._cancel_done = True
            await stream.__aexit__(*exc_info)
        finally:
            self._pooled.active -= 1


def call_status(call: Stream[bytes, bytes], error: GRPCError | None = None) -> RpcStatus:
    """The status an upstream call ended with (OK unless ``error``), with its trailers."""
    trailers = list(call.trailing_metadata.items()) if call.trailing_metadata else []
    if error is None:
        return RpcStatus(Status.OK, trailers=trailers)
    details = error.details if isinstance(error.details, bytes) else b""
    return RpcStatus(error.status, error.message or "", details, trailers)


def status_of(exc: BaseException) -> RpcStatus | None:
    """The status a failed upstream call ends with, or ``None`` if ``exc`` is not an upstream failure."""
    if isinstance(exc, GRPCError):
        details = exc.details if isinstance(exc.details, bytes) else b""
        return RpcStatus(exc.status, exc.message or "", details)
    if isinstance(exc, UnrepresentableMessage):
        return edge_status(Status.INTERNAL, str(exc), reason="RESPONSE_NOT_JSON")
    if isinstance(exc, TimeoutError):  # grpclib's deadline and our own asyncio.timeout alike
        return edge_status(Status.DEADLINE_EXCEEDED, "deadline exceeded", reason="DEADLINE_EXCEEDED")
    if isinstance(exc, (StreamTerminatedError, ProtocolError, H2Error, ConnectionError, OSError,
                        asyncio.IncompleteReadError)):
        log.info("upstream unavailable: %r", exc)
        return edge_status(Status.UNAVAILABLE, "upstream unavailable", reason="UPSTREAM_UNAVAILABLE")
    return None


async def end_sending(stream: Stream[bytes, bytes]) -> None:
    """Half-close our side if it is still open, so the trailers can be read.

    A server may end a streaming call before the client has half-closed
    (gRPC's "early server closure"); grpclib then refuses to read trailers until
    we end too, and ending fails if the server already reset the HTTP/2 stream.
    """
    if stream._end_done:  # grpclib has no public flags for these states
        return
    if stream._send_request_done and stream._stream.closable:
        await stream.end()
    else:
        stream._end_done = True


async def unary(upstream: Upstream, method: Method, request: bytes, *,
                metadata: list[tuple[str, str | bytes]], time_limit: float) -> tuple[bytes, RpcStatus]:
    """One unary call; returns the response bytes and the final status (raises only on cancellation)."""
    try:
        async with upstream.open(method, metadata=metadata, timeout=time_limit) as call:
            try:
                await call.send_message(request, end=True)
                response = await call.recv_message()
                await call.recv_trailing_metadata()
            except GRPCError as exc:
                return b"", call_status(call, exc)
            return response or b"", call_status(call)
    except Exception as exc:
        status = status_of(exc)
        if status is None:
            raise
        return b"", status
