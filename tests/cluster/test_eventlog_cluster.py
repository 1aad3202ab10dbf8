"""The event-log tests against the 3+3 cluster: append, replay, live tail and cancel over sharded pub/sub.

Every test body of ``tests/test_eventlog.py`` runs here with the cluster
fixtures, except those that inspect one server's client list; their cluster
versions below kill the pub/sub connections on every primary instead.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from daveloper.eventlog import EventLog
from daveloper.infra.redis import connect_redis
from tests import test_eventlog
from tests.cluster.valkey_cluster import ValkeyCluster
from tests.test_eventlog import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
from tests.test_eventlog import collect, eventually

# One server's CLIENT LIST / PUBSUB NUMSUB / CLIENT KILL: replaced below.
for _name in (
    "test_followers_resume_from_the_stream_when_their_subscription_is_lost",
    "test_cancel_reaches_the_owner_from_another_client",
    "test_cancel_survives_a_lost_subscriber_connection",
    "test_idle_followers_hold_no_connection_and_send_no_commands",
    "test_the_client_must_return_bytes",
    # PUBSUB NUMSUB and one server's command counts (a sharded SSUBSCRIBE takes one slot's channels
    # only); CLIENT PAUSE of the one server.
    "test_watches_that_come_and_go_together_change_subscriptions_in_batches",
    "test_leaving_a_watch_does_not_wait_for_other_scopes_subscriptions",
):
    assert hasattr(test_eventlog, _name), _name  # renamed upstream: update this list
    del globals()[_name]


def _kill_pubsub_connections(cluster: ValkeyCluster) -> int:
    killed = 0
    for node in cluster.primaries:
        with node.client() as client:
            killed += client.client_kill_filter(_type="pubsub")
    return killed


async def _shard_subscribers(redis: aioredis.Redis, channel: bytes) -> int:
    await redis.initialize()  # type: ignore[attr-defined]
    node = redis.get_node_from_key(channel.decode())  # type: ignore[attr-defined]
    reply = await redis.execute_command("PUBSUB", "SHARDNUMSUB", channel, target_nodes=node)
    return int(reply[1])


async def test_followers_resume_when_their_node_connection_is_lost(
    log: EventLog, valkey_cluster: ValkeyCluster
) -> None:
    readers = [asyncio.create_task(collect(log, "flaky")) for _ in range(5)]
    await log.append("flaky", b"1")
    await eventually(lambda: _subscribed(log, 1))
    # Notices published while the sharded subscription is re-established are lost;
    # the confirmation of the new one makes the followers re-read the stream.
    assert await asyncio.to_thread(_kill_pubsub_connections, valkey_cluster) >= 1
    await log.append_many("flaky", [b"%d" % i for i in range(2, 22)], final=True)
    for reader in readers:
        assert [e.seq for e in await asyncio.wait_for(reader, 10)] == list(range(1, 22))


async def _subscribed(log: EventLog, count: int) -> bool:
    return log.scopes_followed == count


async def test_cancel_reaches_the_owner_from_another_client(log: EventLog, redis_url: str) -> None:
    other_client = connect_redis(redis_url)
    try:
        async with (
            EventLog(other_client, retention=100, ttl_seconds=60) as other,
            log.cancellation("a") as a1,
            log.cancellation("a") as a2,
            log.cancellation("b") as b,
        ):
            assert await _shard_subscribers(other_client, b"dv:control:{a}") == 1  # one for both watches
            assert await other.request_cancel("a") is True
            await asyncio.wait_for(asyncio.gather(a1.wait(), a2.wait()), 2)
            assert not b.is_set()
        # Leaving does not wait for the SUNSUBSCRIBE; it follows at once.
        await eventually(lambda: _subscribers_are(other_client, [b"dv:control:{a}"], 0))
    finally:
        await other_client.aclose()


async def test_cancel_survives_a_lost_subscriber_connection(
    log: EventLog, redis: RedisCluster, valkey_cluster: ValkeyCluster
) -> None:
    async with log.cancellation("job") as cancelled:
        assert await asyncio.to_thread(_kill_pubsub_connections, valkey_cluster) == 1
        # Published while the subscription is re-established, or after: the flag is
        # re-checked when the new subscription is confirmed.
        assert await log.request_cancel("job") is True
        await asyncio.wait_for(cancelled.wait(), 5)
        await eventually(lambda: _has_one_subscriber(redis, b"dv:control:{job}"))


async def test_watches_that_come_and_go_together_are_all_subscribed_and_flags_seen(
    log: EventLog, redis: RedisCluster
) -> None:
    scopes = [f"turn:{i}" for i in range(100)]
    for scope in scopes[::7]:
        assert await log.request_cancel(scope) is True
    channels = [f"dv:control:{{{scope}}}".encode() for scope in scopes]
    async with contextlib.AsyncExitStack() as stack:
        events = await asyncio.gather(*(stack.enter_async_context(log.cancellation(scope)) for scope in scopes))
        assert [scope for scope, event in zip(scopes, events, strict=True) if event.is_set()] == scopes[::7]
        assert await _subscribers_are(redis, channels, 1)
        assert await log.request_cancel(scopes[1]) is True
        await asyncio.wait_for(events[1].wait(), 2)
    await eventually(lambda: _subscribers_are(redis, channels, 0))


async def _subscribers_are(redis: aioredis.Redis, channels: list[bytes], expected: int) -> bool:
    return all([await _shard_subscribers(redis, channel) == expected for channel in channels])


async def _has_one_subscriber(redis: aioredis.Redis, channel: bytes) -> bool:
    return await _shard_subscribers(redis, channel) == 1


def test_the_cluster_client_must_return_bytes(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        EventLog(connect_redis(redis_url, decode_responses=True), retention=1, ttl_seconds=1)
