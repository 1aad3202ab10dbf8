"""Cancel requests for a scope: a durable flag plus a pub/sub notice.

Both, because pub/sub is fire-and-forget: a notice published while the owner
is not subscribed (not yet, or not while its connection is being re-established)
is lost. The flag is not: the owner checks it every time its subscription is
confirmed, and the notice makes a cancel reach an already subscribed owner at
once, whichever instance sent it.

One ``PubSub`` connection per :class:`ControlChannel` serves every scope the
instance owns: a dispatcher task reads it and fans notices out to per-scope
watches, so jobs do not each hold a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daveloper.errors import Unavailable
from daveloper.eventlog._store import ScopeKeys, redis_call
from daveloper.infra.pubsub import open_pubsub, publish_command, pubsub_call

__all__ = ["ControlChannel"]

log = logging.getLogger(__name__)

_CANCEL = b"cancel"
#: The dispatcher reads with this timeout rather than forever so that redis-py's
#: health check (a PING when the connection was idle) runs and a silently dead
#: connection is noticed.
_READ_SECONDS = 1.0
_RECONNECT_DELAY = 0.5

# KEYS: meta hash, cancel flag. ARGV: channel, TTL seconds.
# Flag and notice in one script, so an owner that checks the flag after its
# subscription is confirmed cannot miss both.
_REQUEST_CANCEL = """
if redis.call('HEXISTS', KEYS[1], 'final') == 1 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[1], 'cancel')
return 1
"""


@dataclass(eq=False)
class _Watch:
    """The owners (one event each) waiting for a cancel of one scope in this instance."""

    flag_key: str
    events: set[asyncio.Event] = field(default_factory=set)
    cancelled: bool = False

    def fire(self) -> None:
        self.cancelled = True
        for event in self.events:
            event.set()


class ControlChannel:
    """Delivers cancel requests from any instance to the owner of a scope's work."""

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int, subscribe_timeout: float = 10.0
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_seconds = ttl_seconds
        self._subscribe_timeout = subscribe_timeout
        self._request = redis.register_script(_REQUEST_CANCEL.replace("PUBLISH", publish_command(redis)))
        self._pubsub = open_pubsub(redis)  # takes its connection at the first SUBSCRIBE; sharded on a cluster
        self._watches: dict[bytes, _Watch] = {}
        # Subscription changes are serialized so that a SUBSCRIBE confirmation
        # read by the dispatcher can only belong to the subscription in flight.
        self._changing = asyncio.Lock()
        self._confirming: tuple[bytes, asyncio.Future[None]] | None = None
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    async def request_cancel(self, scope: str) -> bool:
        """Ask the owner of ``scope`` to stop; False if the scope's log is already finished.

        The request is durable for ``ttl_seconds``: an owner that starts
        watching later still sees it.
        """
        keys = ScopeKeys.of(self._prefix, scope)
        requested = await redis_call(self._request(
            keys=[keys.meta, keys.cancel], args=[keys.channel, self._ttl_seconds]
        ))
        return bool(requested)

    @contextlib.asynccontextmanager
    async def cancellation(self, scope: str) -> AsyncIterator[asyncio.Event]:
        """Watch ``scope`` for cancel requests while the block runs; yields an event set on cancel.

        When the block starts, the subscription is confirmed and any earlier
        request has been seen (the event is then already set).
        Raises :class:`~daveloper.errors.Unavailable` if Redis cannot confirm
        the subscription within ``subscribe_timeout``.
        """
        keys = ScopeKeys.of(self._prefix, scope)
        event = asyncio.Event()
        async with self._changing:
            if self._closed:
                raise RuntimeError("control channel is closed")
            watch = self._watches.get(keys.channel)
            if watch is None:
                watch = _Watch(keys.cancel)
                await self._subscribe(keys.channel, watch)
            watch.events.add(event)
            if watch.cancelled:
                event.set()
        try:
            yield event
        finally:
            watch.events.discard(event)
            if not watch.events:
                await self._release(keys.channel, watch)

    async def aclose(self) -> None:
        """Stop the dispatcher and close the pub/sub connection."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            # asyncio.wait, not `await task`: it neither raises the task's
            # CancelledError nor swallows one aimed at us.
            await asyncio.wait([self._dispatcher])
            self._report_crash(self._dispatcher)
        await self._pubsub.aclose()

    async def _subscribe(self, channel: bytes, watch: _Watch) -> None:
        # Registered first: the dispatcher looks the watch up when the
        # confirmation arrives, to check the durable flag.
        self._watches[channel] = watch
        confirmed = asyncio.get_running_loop().create_future()
        self._confirming = (channel, confirmed)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await pubsub_call(self._pubsub.subscribe(channel))
                self._ensure_dispatcher()
                await confirmed
        except BaseException as exc:
            del self._watches[channel]
            with contextlib.suppress(RedisError, Unavailable):
                await pubsub_call(self._pubsub.unsubscribe(channel))
            if isinstance(exc, TimeoutError):
                raise Unavailable("event log control channel: subscription not confirmed",
                                  retry_after=1.0) from exc
            raise
        finally:
            self._confirming = None

    async def _release(self, channel: bytes, watch: _Watch) -> None:
        async with self._changing:
            # Someone may have joined this watch while we waited for the lock.
            if self._closed or watch.events or self._watches.get(channel) is not watch:
                return
            del self._watches[channel]
            try:
                await pubsub_call(self._pubsub.unsubscribe(channel))
            except (RedisError, Unavailable) as exc:  # harmless: notices for unwatched channels are dropped
                log.warning("event log control channel: unsubscribe failed: %s", exc)

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is not None and not self._dispatcher.done():
            self._wake.set()
            return
        if self._dispatcher is not None:
            self._report_crash(self._dispatcher)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="eventlog-control-dispatcher")

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("event log control dispatcher crashed", exc_info=exc)

    async def _dispatch(self) -> None:
        """Read the shared subscription and fan notices out to the watches."""
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # one redis-py dropped (see redis_call)
            if not self._pubsub.subscribed:
                # Never read without a subscription: redis-py's subscribe() then
                # health-checks the connection with its own read, which must not
                # race with ours. _ensure_dispatcher() wakes us.
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=_READ_SECONDS)
                if message is not None:
                    await self._handle(message)
            except RedisError as exc:
                # redis-py reconnects and re-subscribes on the next read; the
                # resulting confirmations re-check every flag (see _handle).
                log.warning("event log control channel: %s; reconnecting", exc)
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        watch = self._watches.get(channel)
        if kind == "message":
            if watch is not None and message["data"] == _CANCEL:
                watch.fire()
        elif kind == "subscribe":
            # Every confirmed (re)subscription, ours or redis-py's after a
            # reconnect, may have missed notices; the durable flag has not.
            if watch is not None and not watch.cancelled and await self._redis.exists(watch.flag_key):
                watch.fire()
            confirming = self._confirming
            if confirming is not None and confirming[0] == channel and not confirming[1].done():
                confirming[1].set_result(None)
