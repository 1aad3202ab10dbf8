"""The edge alone (role ``edge``): the web edge in front of gRPC instances elsewhere.

It opens no Qdrant and no data directory; Redis only to discover the gRPC
instances registered there (:mod:`daveloper.registry`). Its readiness is Redis
(when discovering) and ``upstreams``: some instance answers health with SERVING.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from daveloper.edge.bridge import upstream_probe
from daveloper.errors import ConfigError
from daveloper.health import HealthMonitor
from daveloper.infra.redis import open_redis, redis_probe
from daveloper.metrics import Metrics, open_metrics_server
from daveloper.registry import InstanceRegistry

__all__ = ["Gateway", "open_gateway"]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True, slots=True)
class Gateway:
    """A running edge-only instance (role ``edge``): the web edge in front of gRPC instances elsewhere."""

    settings: Settings
    edge: Edge
    health: HealthMonitor

    async def drain(self) -> None:
        self.health.set_draining()
        await self.edge.drain()


@contextlib.asynccontextmanager
async def open_gateway(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[Gateway]:
    """Serve the edge alone, calling the gRPC instances in ``settings.upstreams`` and those registered in Redis.

    Needs no Qdrant and no data directory; Redis (``settings.redis_url``) only
    for discovery.
    """
    if not settings.upstreams and settings.redis_url is None:
        raise ConfigError("role edge needs gRPC instances: set DAVELOPER_UPSTREAMS, or DAVELOPER_REDIS_URL to "
                          "find the instances registered there")
    metrics = metrics if metrics is not None else Metrics()
    async with contextlib.AsyncExitStack() as stack:
        registry = None
        health = HealthMonitor([], metrics=metrics)
        if settings.metrics_addr is not None:
            await stack.enter_async_context(open_metrics_server(settings.metrics_addr, metrics,
                                                                token=settings.metrics_token))
        if settings.redis_url is not None:
            redis = await stack.enter_async_context(open_redis(settings, metrics=metrics))
            registry = InstanceRegistry(redis, ttl_seconds=settings.lease_seconds, prefix=settings.redis_prefix)
            health.add(redis_probe(redis))
        edge = await stack.enter_async_context(open_edge(settings, upstreams=settings.upstreams, health=health,
                                                         registry=registry, metrics=metrics))
        upstream = edge.state.upstream
        health.add(upstream_probe(upstream, edge.state.codec.methods[HEALTH_CHECK]))
        gateway = Gateway(settings, edge, health)
        try:
            yield gateway
        finally:
            await gateway.drain()
