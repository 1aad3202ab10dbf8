"""The composition root: every resource opens here, in order, and closes in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server
from qdrant_client import AsyncQdrantClient

from daveloper.config import Address, Settings
from daveloper.descriptors import load_descriptor_pool
from daveloper.eventlog import EventLog
from daveloper.health import HealthMonitor
from daveloper.infra.qdrant import open_qdrant, qdrant_probe
from daveloper.infra.redis import open_redis, redis_probe
from daveloper.rpc import Interceptor
from daveloper.servicers.session import SessionService
from daveloper.sessions import SessionStore, TokenSigner, load_secret_key
from generated.daveloper.v1 import (
    AgentServiceBase,
    DocumentServiceBase,
    LogsServiceBase,
    ScraperServiceBase,
    VectorServiceBase,
)

__all__ = ["App", "open_app", "serve"]

log = logging.getLogger("daveloper.app")


@dataclass(frozen=True, slots=True)
class App:
    """A running Daveloper instance and the resources it owns."""

    settings: Settings
    grpc_addr: Address
    redis: aioredis.Redis
    qdrant: AsyncQdrantClient
    events: EventLog
    sessions: SessionStore
    health: HealthMonitor
    interceptor: Interceptor
    server: Server

    async def drain(self) -> None:
        """Stop accepting calls, let running ones finish up to the drain deadline, then end them."""
        log.info("draining", extra={"inflight": self.interceptor.inflight,
                                    "drain_seconds": self.settings.drain_seconds})
        self.health.set_draining()
        # grpclib's Server.close() would cancel every handler at once; close only
        # the listening socket first (no public API for that) and drain ourselves.
        listener = self.server._server
        if listener is not None:
            listener.close()
        with contextlib.suppress(TimeoutError):
            await self.interceptor.drain(self.settings.drain_seconds)


def _bound_port(server: Server) -> int | None:
    """The port the OS gave us (for ``port 0``); grpclib does not expose its listener."""
    listener = server._server
    sockets = getattr(listener, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else None


@contextlib.asynccontextmanager
async def open_app(settings: Settings) -> AsyncIterator[App]:
    """Open Redis, Qdrant, the event log and the gRPC server; yield the running app.

    Leaving the context drains the server and closes everything in reverse order.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings))
        qdrant = await stack.enter_async_context(open_qdrant(settings))
        events = EventLog(redis, retention=settings.event_retention, ttl_seconds=settings.event_ttl_seconds)
        stack.push_async_callback(events.aclose)

        signer = TokenSigner(await load_secret_key(redis, settings.secret_key))
        sessions = SessionStore(redis, signer, admin_token=settings.admin_token)
        session_service = SessionService(
            store=sessions,
            default_ttl=settings.session_ttl_seconds,
            max_ttl=settings.session_max_ttl_seconds,
        )
        # Services without an implementation yet answer UNIMPLEMENTED (the generated bases).
        services: list[Any] = [
            session_service,
            AgentServiceBase(),
            DocumentServiceBase(),
            VectorServiceBase(),
            ScraperServiceBase(),
            LogsServiceBase(),
        ]

        health = HealthMonitor([redis_probe(redis), qdrant_probe(qdrant)])
        await health.check_once()
        qdrant_users = (DocumentServiceBase, VectorServiceBase, AgentServiceBase, ScraperServiceBase)
        needs = {s: ["redis", "qdrant"] if isinstance(s, qdrant_users) else ["redis"] for s in services}
        health_service = health.service(needs)

        interceptor = Interceptor(max_message_bytes=settings.max_message_bytes)
        server = Server(ServerReflection.extend([*services, health_service], pool=load_descriptor_pool()))
        interceptor.install(server)
        await server.start(settings.grpc_addr.host, settings.grpc_addr.port)
        grpc_addr = Address(settings.grpc_addr.host, _bound_port(server) or settings.grpc_addr.port)

        app = App(settings, grpc_addr, redis, qdrant, events, sessions, health, interceptor, server)
        async with asyncio.TaskGroup() as tasks:
            monitor = tasks.create_task(health.run(), name="health-monitor")
            try:
                yield app
            finally:
                await app.drain()
                server.close()
                await server.wait_closed()
                monitor.cancel()
                log.info("stopped")


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with open_app(settings) as app:
            log.info("serving", extra={"grpc": str(app.grpc_addr), "data_dir": str(settings.data_dir)})
            print(f"daveloper: gRPC listening on {app.grpc_addr}", flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("signal received, shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
