"""``open_redis`` on a ``redis+cluster://`` URL: redis-py's cluster client, checked with PING."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable
from daveloper.infra import redacted_url
from daveloper.infra.redis import connect_redis, is_cluster, open_redis
from tests.cluster.valkey_cluster import ValkeyCluster


async def test_a_cluster_url_opens_the_cluster_client(valkey_cluster: ValkeyCluster, data_dir: Path) -> None:
    async with open_redis(Settings(data_dir=data_dir, redis_url=valkey_cluster.url)) as client:
        assert is_cluster(client)
        # Keys of many slots, through whichever primary serves each.
        for i in range(30):
            await client.set(f"k{i}", i)
        assert [int(v) for v in await client.mget_nonatomic([f"k{i}" for i in range(30)])] == list(range(30))  # type: ignore[attr-defined]
    assert not (data_dir / "valkey").exists()  # nothing embedded was started


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    client = connect_redis("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001/")
    assert isinstance(client, RedisCluster)
    assert sorted((n.host, n.port) for n in client.nodes_manager.startup_nodes.values()) == [
        ("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", "s@cret")
    assert redacted_url("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001") == \
        "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7001"


@pytest.mark.parametrize("url", ["redis+cluster://10.0.0.1", "redis+cluster://10.0.0.1:7000,:7001"])
async def test_a_malformed_cluster_url_is_a_config_error(url: str, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        async with open_redis(Settings(data_dir=data_dir, redis_url=url)):
            pass


async def test_an_unreachable_cluster_is_unavailable(data_dir: Path) -> None:
    with pytest.raises(Unavailable, match="does not answer PING"):
        async with open_redis(Settings(data_dir=data_dir, redis_url="redis+cluster://127.0.0.1:1")):
            pass
