"""open_redis and redis_probe against real servers."""

from __future__ import annotations

import asyncio
from importlib import metadata
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable
from daveloper.infra import redacted_url
from daveloper.infra.redis import open_redis, redis_probe
from daveloper.infra.valkey import EmbeddedValkey
from tests.processes import alive


async def test_configured_url_is_used_and_nothing_is_started(
    redis_url: str, redis: aioredis.Redis, data_dir: Path
) -> None:
    async with open_redis(Settings(data_dir=data_dir, redis_url=redis_url)) as client:
        await client.set("infra:written-through-open-redis", b"yes")
    assert await redis.get("infra:written-through-open-redis") == b"yes"
    assert not (data_dir / "valkey").exists()


async def test_every_connection_names_the_client_library(redis_url: str, data_dir: Path) -> None:
    # The driver info is built once for the pool; each new connection still sends it (CLIENT SETINFO).
    async with open_redis(Settings(data_dir=data_dir, redis_url=redis_url)) as client:
        infos = await asyncio.gather(*(client.client_info() for _ in range(3)))
    assert len({info["id"] for info in infos}) == 3
    assert {(info["lib-name"], info["lib-ver"]) for info in infos} == {("redis-py", metadata.version("redis"))}


async def test_without_url_an_embedded_valkey_is_started_and_stopped(data_dir: Path) -> None:
    async with open_redis(Settings(data_dir=data_dir)) as client:
        assert await client.ping()
        pid = int((data_dir / "valkey" / "valkey.pid").read_text().split()[0])
        assert alive(pid)
    assert not alive(pid)


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:1/0", "unix:///nonexistent/redis.sock?password=s3cret"])
async def test_unreachable_url_raises_unavailable_without_the_password(url: str, data_dir: Path) -> None:
    with pytest.raises(Unavailable, match="does not answer PING") as caught:
        async with open_redis(Settings(data_dir=data_dir, redis_url=url)):
            pytest.fail("open_redis yielded for an unreachable server")
    assert redacted_url(url) in caught.value.message
    assert "s3cret" not in caught.value.message


async def test_malformed_url_is_a_config_error(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL http://:\\*\\*\\*@host"):
        async with open_redis(Settings(data_dir=data_dir, redis_url="http://:s3cret@host:6379")):
            pytest.fail("open_redis yielded for a malformed URL")


async def test_health_probe_follows_the_server(data_dir: Path) -> None:
    server = EmbeddedValkey(data_dir)
    await server.start()
    client = aioredis.Redis.from_url(server.url)
    probe = redis_probe(client, timeout=0.5)
    try:
        assert probe.name == "redis"
        assert await probe.check() is True
        await server.stop()
        assert await probe.check() is False
    finally:
        await client.aclose()
        await server.stop()


def test_redacted_url_hides_passwords_only() -> None:
    assert redacted_url("redis://user:pa%40ss@host:6380/2") == "redis://user:***@host:6380/2"
    assert redacted_url("rediss://:pw@host") == "rediss://:***@host"
    assert redacted_url("unix:///run/r.sock?db=1&password=pw") == "unix:///run/r.sock?db=1&password=***"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"
