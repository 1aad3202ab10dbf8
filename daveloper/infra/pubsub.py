"""Pub/sub on one server or on a Redis Cluster, behind the same small interface.

On one server a channel is an ordinary ``SUBSCRIBE`` channel. On a cluster a
channel whose name carries a scope's hash tag is a *sharded* channel: it is
published with ``SPUBLISH`` (from the same Lua script that writes the scope's
keys, which a cluster allows only for a channel in the script's slot) and
only the primary that owns the slot carries it.

:class:`ShardedPubSub` holds one plain pub/sub connection per primary that
owns a followed channel, and one reader task per connection feeding a
single queue, so a reader of many channels waits on one queue, not on each
node in turn. It speaks the subset of redis-py's ``PubSub`` that the event
log's tail and control channel use: ``subscribe``/``unsubscribe``,
``get_message(timeout=)``, ``subscribed`` and ``aclose``; messages come back
as ``message``/``subscribe``/``unsubscribe`` dicts whatever the server sent.

When a node's connection fails (the node crashed, or a failover moved its
slots), its channels are re-routed after the cluster's slot map is refreshed:
each is subscribed again on its slot's current primary, and that confirmation
reaches the reader as a ``subscribe`` message, which the event log already
treats as "notices may have been lost: re-read".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError

from daveloper.errors import Unavailable
from daveloper.infra.redis import redis_call

__all__ = ["PubSubLike", "ShardedPubSub", "open_pubsub", "publish_command", "pubsub_call"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_READ_SECONDS = 1.0
_REROUTE_DELAY = 0.25
_REROUTE_MAX_DELAY = 5.0
_KINDS = {b"smessage": "message", b"ssubscribe": "subscribe", b"sunsubscribe": "unsubscribe",
          "smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


class PubSubLike(Protocol):
    """What the event log needs of a pub/sub connection (redis-py's ``PubSub`` or :class:`ShardedPubSub`)."""

    @property
    def subscribed(self) -> bool: ...

    async def subscribe(self, *channels: Any) -> None: ...

    async def unsubscribe(self, *channels: Any) -> None: ...

    async def get_message(self, ignore_subscribe_messages: bool = False,
                          timeout: float | None = 0.0) -> dict[str, Any] | None: ...  # noqa: ASYNC109 (redis-py's signature)

    async def aclose(self) -> None: ...


def publish_command(redis: Any) -> str:
    """``SPUBLISH`` on a cluster (channels are sharded there), else ``PUBLISH``; for use inside scripts too."""
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"


async def pubsub_call(call: Awaitable[T]) -> T:
    """Await a (un)subscribe on a shared pub/sub connection, as :func:`redis_call` does.

    Two more failures mean "Redis went away" here. When the connection drops,
    the task reading it disconnects it, and a command being written on it at
    that moment meets redis-py's torn-down writer (``AttributeError`` on
    ``None``); or the command reconnects and reads its handshake replies while
    that task reads too (``RuntimeError``: two readers of one stream). Like a
    ``ConnectionError``, both are ``Unavailable``, which callers retry.
    """
    try:
        return await redis_call(call)
    except (AttributeError, RuntimeError) as exc:
        raise Unavailable("pub/sub connection reset during a command", retry_after=0.5) from exc


def open_pubsub(redis: Any) -> PubSubLike:
    """A pub/sub for ``redis``: sharded on a cluster, redis-py's own otherwise (nothing connects yet)."""
    if isinstance(redis, RedisCluster):
        return ShardedPubSub(redis)
    pubsub: PubSubLike = redis.pubsub()
    return pubsub


class ShardedPubSub:
    """Sharded channels over a cluster, read from one queue (see the module docstring)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._nodes: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._rerouting: set[asyncio.Task[None]] = set()
        #: channel -> name of the node it is subscribed on
        self._owner: dict[bytes, str] = {}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        #: Set by each SSUBSCRIBE: a reader waits for it rather than reading an unsubscribed connection.
        self._subscribing: dict[str, asyncio.Event] = {}
        self._closed = False

    @property
    def subscribed(self) -> bool:
        return bool(self._owner)

    async def subscribe(self, *channels: Any) -> None:
        """``SSUBSCRIBE`` each channel on the primary that owns its slot.

        Finished even when the caller is cancelled meanwhile (the cancel is
        raised after): its commands are sent, so each gets the confirmation
        the event log counts on, and the caller's clean-up (an unsubscribe)
        comes after them, as with one server, where the command is written
        before the first await.
        """
        await _to_the_end(self._subscribe([_channel(c) for c in channels]))

    async def unsubscribe(self, *channels: Any) -> None:
        """``SUNSUBSCRIBE`` each channel where it was subscribed (finished even if cancelled, as :meth:`subscribe`)."""
        await _to_the_end(self._unsubscribe([_channel(c) for c in channels]))

    async def _subscribe(self, channels: list[bytes]) -> None:
        await self._cluster.initialize()  # the slot map (a no-op once the client has it)
        for channel in channels:
            node = self._primary(channel)
            await self._node_pubsub(node).ssubscribe(channel)
            self._owner[channel] = node.name
            self._subscribing[node.name].set()

    async def _unsubscribe(self, channels: list[bytes]) -> None:
        for channel in channels:
            owner = self._owner.pop(channel, None)
            if owner is not None and (pubsub := self._nodes.get(owner)) is not None:
                await pubsub.sunsubscribe(channel)

    async def get_message(self, ignore_subscribe_messages: bool = False,
                          timeout: float | None = 0.0) -> dict[str, Any] | None:  # noqa: ASYNC109 (redis-py's)
        """The next message from any node, waiting up to ``timeout`` seconds (``None``: forever)."""
        while True:
            try:
                if timeout is None:
                    message = await self._queue.get()
                else:
                    async with asyncio.timeout(timeout):
                        message = await self._queue.get()
            except TimeoutError:
                return None
            if ignore_subscribe_messages and message["type"] != "message":
                continue
            return message

    async def aclose(self) -> None:
        """Stop the readers and close every node connection."""
        self._closed = True
        readers = [*self._readers.values(), *self._rerouting]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
        for pubsub in self._nodes.values():
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await pubsub.connection_pool.disconnect()
        self._nodes.clear()

    def _primary(self, channel: bytes) -> ClusterNode:
        node = self._cluster.get_node_from_key(channel.decode())
        if node is None:
            raise ClusterDownError(f"no node serves the slot of {channel!r}")
        return node

    def _node_pubsub(self, node: ClusterNode) -> PubSub:
        pubsub = self._nodes.get(node.name)
        if pubsub is None:
            # A pool of its own (one connection): a subscribed socket never goes back to the
            # node's command pool.
            pool = ConnectionPool(connection_class=node.connection_class, max_connections=1,
                                  **node.connection_kwargs)
            pubsub = self._nodes[node.name] = Redis(connection_pool=pool).pubsub()
            self._subscribing[node.name] = asyncio.Event()
            self._readers[node.name] = asyncio.create_task(self._read(node.name, pubsub),
                                                          name=f"sharded-pubsub-{node.name}")
        return pubsub

    async def _read(self, name: str, pubsub: PubSub) -> None:
        """Copy one node's messages to the queue; re-route its channels when its connection fails."""
        subscribing = self._subscribing[name]
        while not self._closed:
            if not pubsub.subscribed:
                # Never read an unsubscribed connection: redis-py's SSUBSCRIBE would then
                # health-check it with a read of its own, racing ours.
                subscribing.clear()
                await subscribing.wait()
                continue
            try:
                message = await pubsub.get_message(timeout=_READ_SECONDS)
            except (RedisError, OSError) as exc:
                log.warning("sharded pub/sub: node %s: %s; re-routing its channels", name, exc)
                await self._reroute(name)
                return
            if message is not None:
                message["type"] = _KINDS.get(message["type"], message["type"])
                self._queue.put_nowait(message)

    async def _reroute(self, failed: str) -> None:
        """Subscribe the failed node's channels again wherever their slots are now served."""
        pubsub = self._nodes.pop(failed, None)
        self._readers.pop(failed, None)
        self._subscribing.pop(failed, None)
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(RedisError, OSError):
                await pubsub.connection_pool.disconnect()
        moved = [channel for channel, owner in self._owner.items() if owner == failed]
        delay = _REROUTE_DELAY
        task = asyncio.current_task()
        if task is not None:
            self._rerouting.add(task)  # aclose() cancels it: it is no longer a node's reader
        try:
            await self._resubscribe(moved, delay)
        finally:
            if task is not None:
                self._rerouting.discard(task)

    async def _resubscribe(self, moved: list[bytes], delay: float) -> None:
        while moved and not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _REROUTE_MAX_DELAY)  # a cluster that stays down is not polled hot
            try:
                # The replica that took over is found from a fresh slot map.
                await self._cluster.nodes_manager.initialize()
                by_node: dict[str, list[bytes]] = defaultdict(list)
                for channel in moved:
                    if channel in self._owner:  # not unsubscribed meanwhile
                        by_node[self._primary(channel).name].append(channel)
                for channels in by_node.values():
                    await self._subscribe(channels)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("sharded pub/sub: re-routing failed: %s; retrying", exc)
                continue
            return


def _channel(channel: Any) -> bytes:
    return channel if isinstance(channel, bytes) else str(channel).encode()


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end; a cancel that arrives meanwhile is raised afterwards."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
