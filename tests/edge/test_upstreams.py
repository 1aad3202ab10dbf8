"""An edge in front of several gRPC instances: discovery through Redis, balancing, failover, drain refusals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from daveloper.app import App, open_app
from daveloper.config import Address, Settings
from daveloper.errors import ConfigError
from daveloper.gateway import Gateway, open_gateway
from daveloper.registry import InstanceRegistry
from tests.edge.client import connect, status
from tests.test_cli import free_port

CREATE = "/daveloper.v1.SessionService/CreateSession"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair(settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[tuple[App, App]]:
    """Two gRPC-only instances on one Redis, each registered for edges to find."""
    grpc = settings.replace(role="grpc", lease_seconds=1.5)
    async with (open_app(grpc.replace(data_dir=tmp_path / "a", instance_id="a")) as a,
                open_app(grpc.replace(data_dir=tmp_path / "b", instance_id="b")) as b):
        yield a, b


@contextlib.asynccontextmanager
async def gateway(settings: Settings, *, upstreams: Sequence[Address] = (),
                  discover: bool = True) -> AsyncIterator[Gateway]:
    edge = settings.replace(role="edge", upstreams=tuple(upstreams), edge_addr=Address("127.0.0.1", 0),
                            redis_url=settings.redis_url if discover else None)
    async with open_gateway(edge) as running:
        yield running


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.05)


async def create_sessions(http: aiohttp.ClientSession, gw: Gateway, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        async with http.post(f"{gw.edge.url}{CREATE}", json={}) as response:
            statuses.append(response.status)
    return statuses


async def test_an_edge_finds_registered_instances_and_spreads_calls(
    pair: tuple[App, App], settings: Settings, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    with pytest.raises(RuntimeError, match="no edge"):
        _ = a.edge
    async with gateway(settings) as gw:
        upstream = gw.edge.state.upstream
        await until(lambda: sorted(upstream.addresses) == sorted([a.grpc_addr, b.grpc_addr]))
        assert await create_sessions(http, gw, 10) == [200] * 10
        calls = {backend.addr: backend.calls for backend in upstream.backends}
        assert all(n >= 3 for n in calls.values()), calls
        async with http.get(f"{gw.edge.url}/readyz") as response:
            assert response.status == 200
            body = await response.json()
        assert body["dependencies"] == {"redis": "serving", "upstreams": "serving"}


async def test_calls_refused_by_a_draining_instance_move_to_another(
    pair: tuple[App, App], settings: Settings, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    async with gateway(settings, upstreams=[a.grpc_addr, b.grpc_addr], discover=False) as gw:
        retries = gw.edge.state.metrics.registry
        retried = retries.get_sample_value("daveloper_edge_upstream_retries_total", {"cause": "draining"})
        await a.interceptor.drain(0)  # a now refuses every new call with UNAVAILABLE, reason DRAINING
        # CreateSession is not idempotent: it moves only because a refused it before running it.
        assert await create_sessions(http, gw, 4) == [200] * 4
        assert gw.edge.state.upstream.available == [b.grpc_addr]
        assert retries.get_sample_value("daveloper_edge_upstream_retries_total",
                                        {"cause": "draining"}) > (retried or 0)
        # The same over a WebSocket stream.
        client = await connect(http, gw.edge)
        for stream_id in (1, 3, 5):
            assert status(await client.call(stream_id, CREATE, {}))["code"] == "ok"
        await client.ws.close()


async def test_a_dead_upstream_is_skipped_and_readiness_needs_a_live_one(
    pair: tuple[App, App], settings: Settings, http: aiohttp.ClientSession
) -> None:
    a, _ = pair
    dead = Address("127.0.0.1", free_port())
    async with gateway(settings, upstreams=[dead, a.grpc_addr], discover=False) as gw:
        assert await create_sessions(http, gw, 3) == [200] * 3
        assert gw.edge.state.upstream.available == [a.grpc_addr]
        async with http.get(f"{gw.edge.url}/readyz") as response:
            assert response.status == 200
    async with gateway(settings, upstreams=[dead], discover=False) as gw:
        async with http.post(f"{gw.edge.url}{CREATE}", json={}) as response:
            assert response.status == 503
            assert (await response.json())["code"] == "unavailable"
        async with http.get(f"{gw.edge.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["dependencies"] == {"upstreams": "not_serving"}
        client = await connect(http, gw.edge)
        assert status(await client.call(1, CREATE, {}))["code"] == "unavailable"
        await client.ws.close()


async def test_an_edge_needs_somewhere_to_send_calls(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="DAVELOPER_UPSTREAMS"):
        async with gateway(settings, discover=False):
            pass


async def test_registry_leases_lapse_and_draining_instances_leave(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    registry = InstanceRegistry(redis, ttl_seconds=0.3)
    one, two = Address("10.0.0.1", 50051), Address("10.0.0.2", 50051)
    await registry.register(one)
    await registry.register(two)
    assert await registry.live() == [one, two]
    await registry.deregister(one)
    assert await registry.live() == [two]
    await asyncio.sleep(0.4)
    assert await registry.live() == []
    assert await redis.zcard("dv:instances") == 0  # lapsed entries are removed, not just hidden

    seen: list[list[Address]] = []
    follower = asyncio.create_task(registry.follow(lambda addrs: seen.append(list(addrs)), static=[one],
                                                   interval=0.05))
    try:
        await until(lambda: seen == [[one]])
        grpc = settings.replace(role="grpc", lease_seconds=5, data_dir=tmp_path / "c", instance_id="c",
                                advertise_addr=two)
        async with open_app(grpc):
            await until(lambda: seen[-1] == [one, two])
        await until(lambda: seen[-1] == [one])
    finally:
        follower.cancel()
        await asyncio.wait([follower])
