"""Upstream calls: every edge stream is one real gRPC stream through grpclib's client.

The edge is an ordinary gRPC client of the servicers (in this process or
another), so deadlines, metadata, auth, cancellation and status behave exactly
as for native clients. The server of the edge's own process is called through
a :class:`~daveloper.rpc.local.LocalChannel` (the same grpclib streams, no
HTTP/2 connection in between); others over HTTP/2. Messages pass through as bytes (:class:`RawCodec`) and
error details as the raw ``google.rpc.Status`` (:class:`RawStatusDetailsCodec`;
grpclib's own codec would drop detail types it does not know).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from grpclib.client import Channel, Stream
from grpclib.const import Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckResponse
from grpclib.server import Server
from h2.exceptions import H2Error

from daveloper.config import Address
from daveloper.edge.codec import Method, UnrepresentableMessage
from daveloper.edge.status import RpcStatus, edge_status, status_reason
from daveloper.infra import TimedProbe
from daveloper.metrics import Metrics
from daveloper.rpc import grpclib_compat
from daveloper.rpc.local import LocalChannel

__all__ = ["Backend", "NoUpstream", "RawCodec", "RawStatusDetailsCodec", "Upstream", "call_status", "end_sending",
           "status_of", "unary", "upstream_probe"]

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


class Backend:
    """A pool of HTTP/2 connections to one gRPC server, grown when the open ones are busy.

    With ``local`` (the grpclib server listening on ``addr`` in this process), one
    in-process channel to it instead.
    """

    def __init__(self, addr: Address, *, ssl: ssl.SSLContext | None = None, local: Server | None = None) -> None:
        self.addr = addr
        self._ssl = ssl
        self._local = local
        self._pool: list[_PooledChannel] = []
        #: Not chosen before this time (``loop.time()``): it refused a connection or is draining.
        self.ejected_until = 0.0
        #: No longer listed (discovery dropped it): closed once its last call ends.
        self.retired = False
        #: Calls sent to it so far.
        self.calls = 0

    def _new_channel(self) -> _PooledChannel:
        channel = (LocalChannel(self._local, codec=RawCodec(), status_details_codec=RawStatusDetailsCodec())
                   if self._local is not None else
                   Channel(self.addr.host, self.addr.port, ssl=self._ssl, codec=RawCodec(),
                           status_details_codec=RawStatusDetailsCodec()))
        pooled = _PooledChannel(channel)
        self._pool.append(pooled)
        return pooled

    @property
    def local(self) -> bool:
        """Whether calls go to this process's own server, in process."""
        return self._local is not None

    def lease(self) -> _PooledChannel:
        pooled = min(self._pool, key=lambda p: p.active, default=None)
        if pooled is None or (pooled.active >= STREAMS_PER_CHANNEL and self._local is None):
            pooled = self._new_channel()
        pooled.active += 1
        self.calls += 1
        return pooled

    def give_back(self, pooled: _PooledChannel) -> None:
        pooled.active -= 1
        if self.retired and self.streams == 0:
            self.close()

    def close(self) -> None:
        for pooled in self._pool:
            pooled.channel.close()
        self._pool.clear()

    @property
    def streams(self) -> int:
        return sum(p.active for p in self._pool)


class Upstream:
    """The gRPC servers the edge calls: one, a static list, or those registered in Redis.

    Each call goes to the server with the fewest open streams among those not
    ejected (ties taken in turn). A server that refuses the connection is
    ejected for ``eject_seconds`` and the call is sent to the next one: nothing
    reached the refusing server, so this is safe for every method. Retrying
    after a call failed with UNAVAILABLE is the caller's decision
    (:func:`unary` does it for idempotent methods and for drain refusals).
    """

    def __init__(self, addrs: Sequence[Address], *, ssl: ssl.SSLContext | None = None,
                 eject_seconds: float = 2.0, metrics: Metrics | None = None,
                 local: tuple[Address, Server] | None = None) -> None:
        self._ssl = ssl
        #: The gRPC server of this process and its address: called in process, not over a socket.
        self._local = local
        #: Calls sent on to another server, by cause (``refused``, ``draining``, ``unavailable``).
        self.retries = (metrics if metrics is not None else Metrics()).edge_upstream_retries
        self.eject_seconds = eject_seconds
        self._backends: dict[Address, Backend] = {}
        self._turn = 0
        self.set_addresses(addrs)

    def set_addresses(self, addrs: Iterable[Address]) -> None:
        """Serve from exactly these servers from now on; calls open on dropped ones finish there."""
        wanted = dict.fromkeys(addrs)
        for addr, backend in list(self._backends.items()):
            if addr not in wanted:
                del self._backends[addr]
                backend.retired = True
                if backend.streams == 0:
                    backend.close()
        for addr in wanted:
            if addr not in self._backends:
                local = self._local[1] if self._local is not None and self._local[0] == addr else None
                self._backends[addr] = Backend(addr, ssl=self._ssl, local=local)
                log.info("upstream added", extra={"upstream": str(addr)})

    @property
    def addresses(self) -> list[Address]:
        return list(self._backends)

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    @property
    def available(self) -> list[Address]:
        """Servers not ejected now."""
        now = asyncio.get_running_loop().time()
        return [b.addr for b in self._backends.values() if b.ejected_until <= now]

    def eject(self, backend: Backend, reason: str) -> None:
        backend.ejected_until = asyncio.get_running_loop().time() + self.eject_seconds
        log.warning("upstream ejected for %.1f s: %s", self.eject_seconds, reason,
                    extra={"upstream": str(backend.addr)})

    def pick(self, avoid: Collection[Backend] = ()) -> Backend | None:
        """The least busy server not ejected and not in ``avoid``; an ejected one if that is all there is."""
        candidates = [b for b in self._backends.values() if b not in avoid]
        if not candidates:
            return None
        now = asyncio.get_running_loop().time()
        healthy = [b for b in candidates if b.ejected_until <= now] or candidates
        self._turn += 1
        rotated = healthy[self._turn % len(healthy):] + healthy[:self._turn % len(healthy)]
        return min(rotated, key=lambda b: b.streams)

    def open(self, method: Method, *, metadata: list[tuple[str, str | bytes]], timeout: float | None,
             avoid: Collection[Backend] = ()) -> UpstreamCall:
        """A call to enter with ``async with``; its stream carries bytes and its request is already sent."""
        return UpstreamCall(self, method, metadata, timeout, avoid)

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()

    @property
    def streams(self) -> int:
        """Upstream streams open now (for tests and metrics)."""
        return sum(b.streams for b in self._backends.values())


class NoUpstream(ConnectionError):
    """No gRPC server is known, or every one refused the connection."""


class UpstreamCall:
    """``async with`` a grpclib client stream on a pooled channel; returns the channel on exit."""

    def __init__(self, upstream: Upstream, method: Method, metadata: list[tuple[str, str | bytes]],
                 timeout: float | None, avoid: Collection[Backend]) -> None:
        self._upstream = upstream
        self._method = method
        self._metadata = metadata
        self._timeout = timeout
        self._avoid = set(avoid)
        self._pooled: _PooledChannel | None = None
        self._stream: Stream[bytes, bytes] | None = None
        #: The server the call went to.
        self.backend: Backend | None = None

    async def __aenter__(self) -> Stream[bytes, bytes]:
        while (backend := self._upstream.pick(self._avoid)) is not None:
            pooled = backend.lease()
            stream = pooled.channel.request(
                self._method.path, self._method.cardinality, bytes, bytes,
                timeout=self._timeout, metadata=self._metadata,
            )
            try:
                await stream.__aenter__()
                await stream.send_request()
            except OSError as exc:  # refused or unreachable: the request never left, try the next server
                backend.give_back(pooled)
                with contextlib.suppress(Exception):
                    await stream.__aexit__(type(exc), exc, exc.__traceback__)
                self._upstream.eject(backend, repr(exc))
                self._avoid.add(backend)
                self._upstream.retries.labels("refused").inc()
                continue
            except BaseException:
                backend.give_back(pooled)
                raise
            self.backend, self._pooled, self._stream = backend, pooled, stream
            return stream
        raise NoUpstream("no gRPC server accepted the call")

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self.backend is not None
        assert self._pooled is not None
        assert self._stream is not None
        stream = self._stream
        try:
            # Leaving a grpclib stream that has not finished waits for trailers that may
            # never come; on an exception grpclib resets the stream itself, otherwise we do.
            unfinished = not grpclib_compat.call_finished(stream)
            if grpclib_compat.request_sent(stream) and unfinished and exc_info[1] is None:
                if grpclib_compat.stream_closable(stream):
                    await stream.cancel()
                else:  # already closed by the server (e.g. a trailers-only error): nothing to wait for
                    grpclib_compat.mark_cancelled(stream)
            await stream.__aexit__(*exc_info)
        finally:
            self.backend.give_back(self._pooled)


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
    if grpclib_compat.end_sent(stream):
        return
    if grpclib_compat.request_sent(stream) and grpclib_compat.stream_closable(stream):
        await stream.end()
    else:
        grpclib_compat.mark_ended(stream)


async def unary(upstream: Upstream, method: Method, request: bytes, *,
                metadata: list[tuple[str, str | bytes]], time_limit: float) -> tuple[bytes, RpcStatus]:
    """One unary call; returns the response bytes and the final status (raises only on cancellation).

    A call that ends UNAVAILABLE is sent to another server (each server once)
    if the method is idempotent or the server refused it while draining.
    """
    tried: list[Backend] = []
    while True:
        response, status, backend = await _unary_once(upstream, method, request, metadata=metadata,
                                                      time_limit=time_limit, avoid=tried)
        if backend is None or status.code is not Status.UNAVAILABLE:
            return response, status
        draining = status_reason(status) == "DRAINING"
        if draining:
            upstream.eject(backend, "draining")
        tried.append(backend)
        if not (draining or method.idempotent) or upstream.pick(tried) is None:
            return response, status
        upstream.retries.labels("draining" if draining else "unavailable").inc()
        log.info("retrying %s on another server", method.path, extra={"upstream": str(backend.addr)})


async def _unary_once(upstream: Upstream, method: Method, request: bytes, *,
                      metadata: list[tuple[str, str | bytes]], time_limit: float,
                      avoid: Collection[Backend]) -> tuple[bytes, RpcStatus, Backend | None]:
    opened = upstream.open(method, metadata=metadata, timeout=time_limit, avoid=avoid)
    try:
        async with opened as call:
            try:
                await call.send_message(request, end=True)
                response = await call.recv_message()
                await call.recv_trailing_metadata()
            except GRPCError as exc:
                return b"", call_status(call, exc), opened.backend
            return response or b"", call_status(call), opened.backend
    except Exception as exc:
        status = status_of(exc)
        if status is None:
            raise
        return b"", status, opened.backend


def upstream_probe(upstream: Upstream, check: Method, *, timeout: float = 1.0) -> TimedProbe:
    """Healthy when some upstream server answers ``grpc.health.v1.Health/Check`` with SERVING.

    ``check`` is that method as the edge's codec knows it. Each probe asks the
    server the balancer would pick, skipping ejected ones.
    """
    async def request() -> None:
        response, status = await unary(upstream, check, b"", metadata=[], time_limit=timeout)
        if not status.ok:
            raise NoUpstream(f"upstream health check: {status.code.name} {status.message}")
        if HealthCheckResponse.FromString(response).status != HealthCheckResponse.SERVING:
            raise NoUpstream("upstream not serving")

    return TimedProbe("upstreams", request, timeout=timeout)
