"""The gRPC server started: servicers, health and reflection behind the interceptor and the connection guard.

:func:`open_grpc_server` starts grpclib's ``Server`` on ``settings.grpc_addr`` and
closes it on exit. It does not drain: the caller drains first
(:meth:`GrpcServer.drain`), because grpclib's ``close()`` cancels every handler at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from daveloper.config import Address, Settings
from daveloper.descriptors import load_descriptor_pool
from daveloper.health import HealthMonitor
from daveloper.jobs import BackgroundJobs
from daveloper.metrics import Metrics
from daveloper.rpc import grpclib_compat
from daveloper.rpc.connections import guard_server
from daveloper.rpc.encoded import PassThroughCodec
from daveloper.rpc.interceptor import Interceptor
from daveloper.tls import grpc_context

__all__ = ["GrpcServer", "open_grpc_server"]


@dataclass(frozen=True, slots=True)
class GrpcServer:
    """A started gRPC server, the interceptor every call passes, and the address it listens on."""

    server: Server
    interceptor: Interceptor
    #: The bound address (the port the OS chose for port 0).
    addr: Address

    async def drain(self, seconds: float, jobs: BackgroundJobs) -> None:
        """Refuse new connections, let calls run up to ``seconds``, and ``jobs`` what is left of it; then end them."""
        # grpclib's Server.close() would cancel every handler at once; close only
        # the listening socket first (no public API for that) and drain ourselves.
        listener = grpclib_compat.listener(self.server)
        if listener is not None:
            listener.close()
        deadline = asyncio.get_running_loop().time() + seconds
        with contextlib.suppress(TimeoutError):
            await self.interceptor.drain(seconds)
        # Background jobs (ingestions) get what is left of the drain period, then
        # are cancelled and record that they were interrupted.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await jobs.idle()
        await jobs.aclose()


def _bound_port(server: Server) -> int | None:
    """The port the OS gave us (for ``port 0``); grpclib does not expose its listener."""
    sockets = getattr(grpclib_compat.listener(server), "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else None


@contextlib.asynccontextmanager
async def open_grpc_server(settings: Settings, services: Mapping[Any, Iterable[str]], health: HealthMonitor,
                           metrics: Metrics) -> AsyncIterator[GrpcServer]:
    """Serve ``services`` (each with the health probes it follows), health and reflection; close on exit."""
    interceptor = Interceptor(max_message_bytes=settings.max_message_bytes,
                              trusted_proxies=settings.trusted_proxies, metrics=metrics)
    handlers = [*services, health.service(services)]
    # Stored events go out as stored (daveloper.rpc.encoded); a given codec drops grpclib's default
    # status-details codec, so name it too.
    server = Server(ServerReflection.extend(handlers, pool=load_descriptor_pool()),
                    codec=PassThroughCodec(), status_details_codec=ProtoStatusDetailsCodec())
    interceptor.install(server)
    guard_server(server, header_seconds=settings.header_timeout_seconds,
                 per_address=settings.max_connections_per_address,
                 on_refused=lambda reason: metrics.connections_refused.labels("grpc", reason).inc(),
                 shared=settings.trusted_proxies)
    # The TLS handshake is bounded like the preface after it (grpclib's own start leaves asyncio's 60 s).
    await grpclib_compat.start(server, settings.grpc_addr.host, settings.grpc_addr.port, ssl=grpc_context(settings),
                               backlog=settings.listen_backlog,
                               ssl_handshake_timeout=settings.header_timeout_seconds or None)
    try:
        yield GrpcServer(server, interceptor, Address(settings.grpc_addr.host,
                                                      _bound_port(server) or settings.grpc_addr.port))
    finally:
        server.close()
        await server.wait_closed()
