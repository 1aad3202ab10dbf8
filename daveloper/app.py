"""The composition root: every subsystem opens here, in order, and closes in reverse.

Each subsystem is started by the package that owns it: the shared resources
(:func:`daveloper.infra.core.open_core`), sessions and the guard
(:func:`daveloper.access.open_access`), documents, the scraper and the agent
(``open_documents``, ``open_scraper``, ``open_agent`` in their packages), the gRPC
server (:func:`daveloper.rpc.server.open_grpc_server`) and the edge. This module
only joins them and runs the instance's background loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from grpclib.server import Server

from daveloper.access import open_access
from daveloper.agent.model import ChatModel
from daveloper.agent.subsystem import open_agent
from daveloper.config import Address, Settings
from daveloper.documents.catalog import Catalog
from daveloper.documents.pool import DocumentPool
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.documents.subsystem import open_documents
from daveloper.edge import Edge, open_edge
from daveloper.eventlog import EventLog
from daveloper.gateway import open_gateway
from daveloper.health import HealthMonitor
from daveloper.infra.core import Core, open_core
from daveloper.infra.heap import tune_collector
from daveloper.jobs import BackgroundJobs
from daveloper.metrics import Metrics, open_metrics_server
from daveloper.registry import InstanceRegistry
from daveloper.rpc import Interceptor, proto_defaults
from daveloper.rpc.server import GrpcServer, open_grpc_server
from daveloper.scraper.subsystem import open_scraper
from daveloper.sessions import SessionStore
from daveloper.tracing import configure_tracing
from daveloper.vectors import VectorEngine

__all__ = ["App", "open_app", "serve"]

log = logging.getLogger("daveloper.app")


@dataclass(frozen=True, slots=True)
class App:
    """A running Daveloper instance and the resources it owns."""

    settings: Settings
    grpc_addr: Address
    redis: aioredis.Redis
    qdrant: VectorEngine
    events: EventLog
    sessions: SessionStore
    catalog: Catalog
    chunk_store: ChunkStore
    search: DocumentSearch
    jobs: BackgroundJobs
    health: HealthMonitor
    interceptor: Interceptor
    server: Server
    #: The web edge (``None`` for role ``grpc``).
    web: Edge | None
    #: Keeps this instance in the registry edges discover (role ``grpc``); cancelled when draining.
    registration: asyncio.Task[None] | None
    #: What this instance counts into (its ``GET /metrics``).
    metrics: Metrics
    #: The worker processes that parse, chunk and embed documents.
    documents_pool: DocumentPool
    grpc: GrpcServer

    @property
    def edge(self) -> Edge:
        if self.web is None:
            raise RuntimeError("this instance runs no edge (role grpc)")
        return self.web

    async def drain(self) -> None:
        """Stop accepting calls, let running ones finish up to the drain deadline, then end them.

        The edge and the gRPC server drain together: WebSocket streams are gRPC
        calls to this server, so they end when the server ends its calls.
        """
        log.info("draining", extra={"inflight": self.interceptor.inflight,
                                    "drain_seconds": self.settings.drain_seconds})
        self.health.set_draining()
        if self.registration is not None:  # edges stop choosing this instance before it refuses calls
            self.registration.cancel()
            await asyncio.wait([self.registration])
        await asyncio.gather(*([self.web.drain()] if self.web else []),
                             self.grpc.drain(self.settings.drain_seconds, self.jobs))


@contextlib.asynccontextmanager
async def _open_front(core: Core, grpc: GrpcServer, health: HealthMonitor,
                      tasks: asyncio.TaskGroup) -> AsyncIterator[tuple[Edge | None, asyncio.Task[None] | None]]:
    """Role ``grpc``: register in Redis for edges to find; otherwise serve the edge in front of this server."""
    settings = core.settings
    grpc_addr = grpc.addr
    if settings.role == "grpc":
        registry = InstanceRegistry(core.redis, ttl_seconds=settings.lease_seconds, prefix=settings.redis_prefix)
        registration = tasks.create_task(registry.heartbeat(settings.advertise_addr or grpc_addr),
                                         name="registry-heartbeat")
        try:
            yield None, registration
        finally:
            registration.cancel()
        return
    async with open_edge(settings, upstreams=[grpc_addr, *settings.upstreams], health=health,
                         metrics=core.metrics, local=(grpc_addr, grpc.server)) as edge:
        yield edge, None


@contextlib.asynccontextmanager
async def open_app(settings: Settings, *, metrics: Metrics | None = None,
                   chat_model: ChatModel | None = None) -> AsyncIterator[App]:
    """Start every subsystem and the gRPC server (and the edge, or the registration); yield the running app.

    Every component counts into ``metrics`` (none given: a registry of this app's own).
    ``chat_model`` replaces the configured chat provider. Leaving the context drains
    the server and closes everything in reverse order.
    """
    metrics = metrics if metrics is not None else Metrics()
    proto_defaults.install()  # every message this process encodes: half the cost (daveloper.rpc.proto_defaults)
    async with contextlib.AsyncExitStack() as stack:
        core = await stack.enter_async_context(open_core(settings, metrics))
        access = open_access(core)
        documents = await stack.enter_async_context(open_documents(core, access.guard))
        scraper = await stack.enter_async_context(open_scraper(core, access.guard, documents))
        chat = await stack.enter_async_context(open_agent(core, access.guard, documents, scraper,
                                                          chat_model=chat_model))
        # A session is purged conversations first, then documents, then jobs (each its logs before its records).
        served, sweeper = access.services([chat, documents, scraper])
        health = HealthMonitor(core.probes, advisory=[chat.probe], metrics=metrics)
        await health.check_once()
        grpc = await stack.enter_async_context(open_grpc_server(
            settings, {**served, **documents.services, **scraper.services, **chat.services}, health, metrics))
        if settings.metrics_addr is not None:
            await stack.enter_async_context(open_metrics_server(settings.metrics_addr, metrics,
                                                                token=settings.metrics_token))
        async with asyncio.TaskGroup() as tasks:
            loops = [tasks.create_task(loop, name=name) for name, loop in (
                ("health-monitor", health.run()), ("session-sweeper", sweeper.run()),
                ("runtime-options", core.runtime.run()), ("work-leases", core.work.run()))]
            try:
                async with _open_front(core, grpc, health, tasks) as (edge, registration):
                    app = App(settings, grpc.addr, core.redis, core.qdrant, core.events, access.sessions,
                              documents.catalog, documents.chunk_store, documents.search, core.jobs, health,
                              grpc.interceptor, grpc.server, edge, registration, metrics, documents.pool, grpc)
                    try:
                        yield app
                    finally:
                        await app.drain()
            finally:
                for task in loops:
                    task.cancel()
                log.info("stopped")


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics()  # the process's: what its GET /metrics shows
    try:
        async with contextlib.AsyncExitStack() as stack:
            if (stop_tracing := configure_tracing(settings)) is not None:
                # Flushing waits on the collector: off the event loop.
                stack.push_async_callback(asyncio.to_thread, stop_tracing)
            if settings.role == "edge":
                gateway = await stack.enter_async_context(open_gateway(settings, metrics=metrics))
                log.info("serving", extra={"role": "edge", "edge": gateway.edge.url,
                                           "upstreams": [str(a) for a in settings.upstreams]})
                print(f"daveloper: web page, WebSocket (/ws) and HTTP/JSON on {gateway.edge.url}", flush=True)
            else:
                app = await stack.enter_async_context(open_app(settings, metrics=metrics))
                log.info("serving", extra={"role": settings.role, "grpc": str(app.grpc_addr),
                                           "edge": app.web.url if app.web else None,
                                           "data_dir": str(settings.data_dir)})
                print(f"daveloper: gRPC listening on {app.grpc_addr}", flush=True)
                if app.web is not None:
                    print(f"daveloper: web page, WebSocket (/ws) and HTTP/JSON on {app.web.url}", flush=True)
            tune_collector()  # once up: what start-up allocated is never scanned again (daveloper.infra.heap)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("signal received, shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
