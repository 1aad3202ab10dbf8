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
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daveloper.errors import Unavailable
from daveloper.eventlog._store import ScopeKeys, redis_call
from daveloper.infra.pubsub import open_pubsub, publish_command, pubsub_call

__all__ = ["ControlChannel", "TaskStopper"]

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


class TaskStopper(asyncio.Event):
    """A cancellation's event (pass it to :meth:`ControlChannel.cancellation`) that, once armed,
    cancels the task that armed it when a cancel arrives, once, as ``asyncio.timeout`` does, and
    tells afterwards whether the ``CancelledError`` was its own."""

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._fired = False
        #: When the cancel was heard (``time.perf_counter``).
        self.told = 0.0

    def arm(self) -> None:
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()

    def set(self) -> None:
        if self.is_set():
            return
        super().set()
        if self._task is not None:
            self.told = time.perf_counter()
            self._fired = True
            self._task.cancel()

    def disarm(self) -> bool:
        """Stop cancelling; True if a cancel of ours was delivered and no other cancel is pending."""
        task, self._task = self._task, None
        if task is None or not self._fired:
            return False
        self._fired = False
        return task.uncancel() <= self._cancelling


@dataclass(eq=False)
class _Watch:
    """The owners (one event each) waiting for a cancel of one scope in this instance."""

    flag_key: str
    #: True once the subscription is confirmed and the flag was read; False if it could not be set up.
    ready: asyncio.Future[bool]
    events: set[asyncio.Event] = field(default_factory=set)
    cancelled: bool = False
    #: Its SUBSCRIBE was sent: a confirmation for the channel from then on is its own.
    sent: bool = False

    def fire(self) -> None:
        self.cancelled = True
        for event in self.events:
            event.set()


class ControlChannel:
    """Delivers cancel requests from any instance to the owner of a scope's work.

    Watches come and go in bursts (1,000 turns start, or end, within a second), so
    subscriptions change in batches: entering or leaving a watch only marks its
    channel, and one task brings the connection's subscriptions in line with the
    watches, one ``SUBSCRIBE`` and one ``UNSUBSCRIBE`` for all that changed since
    its last round. Confirmed channels have their flags read in one pipelined round
    trip. Leaving a watch never waits: the end of a turn does not queue behind
    other turns' subscription changes.
    """

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int, subscribe_timeout: float = 10.0
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_seconds = ttl_seconds
        self._subscribe_timeout = subscribe_timeout
        self._request = redis.register_script(_REQUEST_CANCEL.replace("PUBLISH", publish_command(redis)))
        self._pubsub = open_pubsub(redis)  # takes its connection at the first SUBSCRIBE; sharded on a cluster
        #: Every watch from its first owner until its channel is unsubscribed (or never was).
        self._watches: dict[bytes, _Watch] = {}
        #: Channels sent SUBSCRIBE and no UNSUBSCRIBE since.
        self._subscribed: set[bytes] = set()
        #: Channels whose subscription may have to change (an ordered set), for the next round of changes.
        self._changed: dict[bytes, None] = {}
        #: Channels confirmed by the server whose flag is still to be read.
        self._confirmed: dict[bytes, None] = {}
        self._changes: asyncio.Task[None] | None = None
        self._checks: asyncio.Task[None] | None = None
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
    async def cancellation(self, scope: str, event: asyncio.Event | None = None) -> AsyncIterator[asyncio.Event]:
        """Watch ``scope`` for cancel requests while the block runs; yields an event set on cancel
        (``event`` if given: a subclass may act as it is set).

        When the block starts, the subscription is confirmed and any earlier
        request has been seen (the event is then already set).
        Raises :class:`~daveloper.errors.Unavailable` if Redis cannot confirm
        the subscription within ``subscribe_timeout``. Leaving the block does not wait.
        """
        if self._closed:
            raise RuntimeError("control channel is closed")
        keys = ScopeKeys.of(self._prefix, scope)
        watch = self._watches.get(keys.channel)
        if watch is None:
            watch = self._watches[keys.channel] = _Watch(keys.cancel, asyncio.get_running_loop().create_future())
        event = event if event is not None else asyncio.Event()
        watch.events.add(event)
        if watch.cancelled:
            event.set()
        if keys.channel not in self._subscribed:
            self._change(keys.channel)
        try:
            if not await self._ready(watch):
                raise Unavailable("event log control channel: subscription not confirmed", retry_after=1.0)
            yield event
        finally:
            watch.events.discard(event)
            if not watch.events:
                self._change(keys.channel)

    async def _ready(self, watch: _Watch) -> bool:
        if watch.ready.done():
            return watch.ready.result()
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                return await asyncio.shield(watch.ready)  # shared by the watch's owners
        except TimeoutError:
            return False

    async def aclose(self) -> None:
        """Stop the tasks and close the pub/sub connection."""
        self._closed = True
        tasks = [task for task in (self._dispatcher, self._changes, self._checks) if task is not None]
        for task in tasks:
            task.cancel()
        # asyncio.wait, not `await task`: it neither raises the task's CancelledError nor swallows one aimed at us.
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            self._report_crash(task)
        for watch in self._watches.values():
            if not watch.ready.done():
                watch.ready.set_result(False)
        await self._pubsub.aclose()

    def _change(self, channel: bytes) -> None:
        self._changed[channel] = None
        if not self._closed and (self._changes is None or self._changes.done()):
            self._changes = asyncio.create_task(self._apply_changes(), name="eventlog-control-changes")

    async def _apply_changes(self) -> None:
        """Subscribe the channels watched and unsubscribe the ones left, a batch per round, until none changed.

        The only task that sends (un)subscriptions, so they reach the connection in the order decided.
        """
        while self._changed:
            changed, self._changed = self._changed, {}
            subscribe: list[bytes] = []
            unsubscribe: list[bytes] = []
            for channel in changed:
                watch = self._watches.get(channel)
                if watch is not None and watch.events:
                    if channel not in self._subscribed:
                        watch.sent = True  # before the send: its confirmation may be read before we resume
                        subscribe.append(channel)
                    continue
                if watch is not None:  # nobody watches it any more
                    del self._watches[channel]
                if channel in self._subscribed:
                    unsubscribe.append(channel)
            if unsubscribe:
                self._subscribed.difference_update(unsubscribe)
                try:
                    await pubsub_call(self._pubsub.unsubscribe(*unsubscribe))
                except (RedisError, Unavailable) as exc:  # harmless: notices for unwatched channels are dropped
                    log.warning("event log control channel: unsubscribe failed: %s", exc)
            if subscribe:
                self._subscribed.update(subscribe)
                try:
                    await pubsub_call(self._pubsub.subscribe(*subscribe))
                except (RedisError, Unavailable) as exc:
                    log.warning("event log control channel: subscribe failed: %s", exc)
                    self._subscribed.difference_update(subscribe)
                    for channel in subscribe:
                        self._settle(channel, False)
                    continue
                self._ensure_dispatcher()

    def _settle(self, channel: bytes, ready: bool) -> None:
        watch = self._watches.get(channel)
        if watch is not None and not watch.ready.done():
            watch.ready.set_result(ready)

    def _check(self, channel: bytes) -> None:
        """Read ``channel``'s flag soon, with those of every channel confirmed meanwhile."""
        self._confirmed[channel] = None
        if self._checks is None or self._checks.done():
            self._checks = asyncio.create_task(self._check_flags(), name="eventlog-control-flags")

    async def _check_flags(self) -> None:
        """Every confirmed (re)subscription may have missed notices; the durable flags have not."""
        while self._confirmed:
            batch = [(channel, watch) for channel in self._confirmed if (watch := self._watches.get(channel))]
            self._confirmed.clear()
            if not batch:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for _, watch in batch:
                        pipe.exists(watch.flag_key)
                    flags = await redis_call(pipe.execute())
            except (RedisError, Unavailable) as exc:
                log.warning("event log control channel: cancel flags not read: %s", exc)
                for channel, _ in batch:
                    self._settle(channel, False)
                continue
            for (channel, watch), flag in zip(batch, flags, strict=True):
                if flag and not watch.cancelled:
                    watch.fire()
                self._settle(channel, True)

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
                    self._handle(message)
            except RedisError as exc:
                # redis-py reconnects and re-subscribes on the next read; the
                # resulting confirmations re-check every flag (see _handle).
                log.warning("event log control channel: %s; reconnecting", exc)
                await asyncio.sleep(_RECONNECT_DELAY)

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        watch = self._watches.get(channel)
        if watch is None:
            return
        if kind == "message":
            if message["data"] == _CANCEL:
                watch.fire()
        elif kind == "subscribe" and watch.sent:  # ours, or redis-py's again after a reconnect
            self._check(channel)
