"""grpc.health.v1 follows real dependency state: a Valkey that stops and comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server
from redis.asyncio import Redis

from daveloper.health import HealthMonitor
from daveloper.infra.redis import redis_probe
from daveloper.infra.valkey import EmbeddedValkey
from generated.daveloper.v1 import DocumentServiceBase, SessionServiceBase

pytestmark = pytest.mark.timeout(30)

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


class AlwaysUp:
    name = "qdrant"

    async def check(self) -> bool:
        return True


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    async with EmbeddedValkey(tmp_path / "data") as server:
        yield server


async def test_status_follows_redis_down_and_up(valkey: EmbeddedValkey, tmp_path: Path) -> None:
    client = Redis.from_url(valkey.url, socket_timeout=1, socket_connect_timeout=1)
    monitor = HealthMonitor([redis_probe(client, timeout=0.5), AlwaysUp()], interval=0.05)
    sessions, documents = SessionServiceBase(), DocumentServiceBase()
    server = Server([monitor.service({sessions: ["redis"], documents: ["redis", "qdrant"]})])
    await server.start("127.0.0.1", 0)
    channel = Channel("127.0.0.1", server._server.sockets[0].getsockname()[1])
    stub = HealthStub(channel)
    seen: list[Any] = []
    try:
        async with asyncio.TaskGroup() as tasks:
            poller = tasks.create_task(monitor.run())

            async def status(service: str) -> Any:
                return (await stub.Check(HealthCheckRequest(service=service), timeout=5)).status

            async def until(service: str, wanted: Any) -> None:
                while await status(service) != wanted:  # noqa: ASYNC110 - polling the RPC is the test
                    await asyncio.sleep(0.02)

            async def watch() -> None:
                async with stub.Watch.open(timeout=20) as stream:
                    await stream.send_message(HealthCheckRequest(service="daveloper.v1.SessionService"), end=True)
                    async for reply in stream:
                        seen.append(reply.status)
                        if seen[-3:] == [SERVING, NOT_SERVING, SERVING]:
                            await stream.cancel()
                            return

            watcher = tasks.create_task(watch())
            await until("", SERVING)
            assert await status("daveloper.v1.DocumentService") == SERVING

            await valkey.stop()
            await until("daveloper.v1.SessionService", NOT_SERVING)
            assert await status("") == NOT_SERVING

            await valkey.start()
            await until("daveloper.v1.SessionService", SERVING)
            await asyncio.wait_for(watcher, 10)

            monitor.set_draining()
            assert await status("") == NOT_SERVING
            poller.cancel()
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
        await client.aclose()
    # Watch pushed each change as it happened, not just the latest state.
    assert seen[-3:] == [SERVING, NOT_SERVING, SERVING]
