"""The live tail of scopes: one subscription per scope per process, fanned out to local readers.

Every append publishes the entries it stored on the scope's tail channel (in
the same script, so publish order is seq order). A process subscribes to a
scope's channel once, however many of its streams follow that scope, and
copies each published entry to every local follower; an idle follower costs
no Redis command at all. The stream stays the source of truth: pub/sub is
fire-and-forget, so a follower that sees a gap in the seqs (a notice lost
while the connection was re-established), falls too far behind, or hears that
its subscription was re-established re-reads the stream from its cursor.

Tail message layout (see ``log.py``'s append script)::

    b"<first seq> <final 0|1> <size 1> ... <size n>\\n" + payload 1 + ... + payload n
    b"gone"                                              the scope was deleted

On a Redis Cluster the tail channel is a sharded channel in the scope's slot
(``SPUBLISH`` from the append script; see :mod:`daveloper.infra.pubsub`), so a
scope's notices travel only through the node that stores the scope.

Readers wait without a timer each: the dispatcher asks the followers of a
scope that has been quiet for ``quiet_seconds`` (the log's TTL, after which it
may have expired unnoticed) to check it still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daveloper.errors import Unavailable
from daveloper.infra.pubsub import open_pubsub, pubsub_call
from daveloper.infra.redis import redis_down

__all__ = ["RESYNC", "UNREACHABLE", "VERIFY", "Follower", "Item", "TailEntry", "Tails", "parse_tail_message"]

log = logging.getLogger(__name__)

#: The dispatcher reads with this timeout rather than forever so that redis-py's
#: health check runs on an idle connection and a silently dead one is noticed.
_READ_SECONDS = 1.0
_RECONNECT_DELAY = 0.5
#: Entries a follower may have waiting before it is told to re-read the stream
#: instead: a slow stream costs a bounded amount of memory, never an event.
MAX_PENDING = 256

GONE_NOTICE = b"gone"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Re-read the stream from your cursor (entries may have been missed).
RESYNC = _Marker("RESYNC")
#: Check the scope still exists: it was deleted, or has been quiet long enough to have expired.
VERIFY = _Marker("VERIFY")
#: Redis does not answer: the read ends (UNAVAILABLE) rather than wait unseen; the client resumes later.
UNREACHABLE = _Marker("UNREACHABLE")

#: (seq, payload, final) of one published entry.
TailEntry = tuple[int, bytes, bool]
Item = TailEntry | _Marker


def parse_tail_message(data: bytes) -> list[TailEntry] | _Marker:
    """The entries of one tail message (``VERIFY`` for a deletion); raises ``ValueError`` if it is malformed."""
    if data == GONE_NOTICE:
        return VERIFY
    header, _, body = data.partition(b"\n")
    first, final, *sizes = header.split(b" ")
    seq, pos = int(first), 0
    entries: list[TailEntry] = []
    for size in map(int, sizes):
        entries.append((seq, body[pos:pos + size], False))
        seq, pos = seq + 1, pos + size
    if pos != len(body) or not entries:
        raise ValueError("tail message sizes do not match its body")
    if final == b"1":
        entries[-1] = (entries[-1][0], entries[-1][1], True)
    return entries


class Follower:
    """One local reader's inbox: published entries and markers, in order."""

    __slots__ = ("_pending", "_wake")

    def __init__(self) -> None:
        self._pending: deque[Item] = deque()
        self._wake = asyncio.Event()

    def push(self, item: Item) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()  # the stream still holds them
            item = RESYNC
        self._pending.append(item)
        self._wake.set()

    async def next(self) -> Item:
        """The next item, once there is one."""
        if not self._pending:
            self._wake.clear()
            await self._wake.wait()
        return self._pending.popleft()


@dataclass(eq=False)
class _Feed:
    """The followers of one scope in this process."""

    followers: set[Follower] = field(default_factory=set)
    confirmed: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: Loop time of the last message (or of the subscription).
    active: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class Tails:
    """One pub/sub connection per process (per primary on a cluster) carrying the tail of every followed scope."""

    def __init__(self, redis: aioredis.Redis, *, quiet_seconds: float, subscribe_timeout: float = 10.0) -> None:
        # Takes its connection(s) at the first SUBSCRIBE; sharded channels on a cluster.
        self._pubsub = open_pubsub(redis)
        self._redis = redis
        self._quiet_seconds = quiet_seconds
        self._next_sweep = 0.0
        self._subscribe_timeout = subscribe_timeout
        self._feeds: dict[bytes, _Feed] = {}
        # SUBSCRIBE commands whose confirmation has not been read, per channel: a
        # feed is confirmed by the last of them, not by an earlier feed's.
        self._unconfirmed: dict[bytes, int] = {}
        # Subscription changes go out in the order they were decided.
        self._changing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def follow(self, channel: bytes) -> AsyncIterator[Follower]:
        """Receive what is published on ``channel`` while the block runs.

        The block starts once the subscription is confirmed: everything
        published from then on reaches the follower. Raises
        :class:`~daveloper.errors.Unavailable` if Redis does not confirm it
        within ``subscribe_timeout``.
        """
        if self._closed:
            raise RuntimeError("event log tails are closed")
        follower = Follower()
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = _Feed()
            feed.followers.add(follower)
            try:
                async with self._changing:
                    self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
                    try:
                        await pubsub_call(self._pubsub.subscribe(channel))
                    except BaseException:
                        # Not sent (Redis away): no confirmation will come for it, and a count left
                        # behind would make the next follower of this scope wait for one forever.
                        if (waiting := self._unconfirmed.get(channel, 0)) > 1:
                            self._unconfirmed[channel] = waiting - 1
                        else:
                            self._unconfirmed.pop(channel, None)
                        raise
                self._ensure_dispatcher()
            except BaseException:
                await self._leave(channel, feed, follower)
                raise
        else:
            feed.followers.add(follower)
        try:
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    await asyncio.shield(feed.confirmed)
            except TimeoutError as exc:
                raise Unavailable("event log tail: subscription not confirmed", retry_after=1.0) from exc
            yield follower
        finally:
            await self._leave(channel, feed, follower)

    async def aclose(self) -> None:
        """Stop the dispatcher and close the pub/sub connection."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.wait([self._dispatcher])
            self._report_crash(self._dispatcher)
        await self._pubsub.aclose()

    @property
    def scopes_followed(self) -> int:
        """How many channels this process is subscribed to (one per followed scope)."""
        return len(self._feeds)

    async def _leave(self, channel: bytes, feed: _Feed, follower: Follower) -> None:
        feed.followers.discard(follower)
        if feed.followers or self._feeds.get(channel) is not feed:
            return
        del self._feeds[channel]
        if self._closed:
            return
        async with self._changing:
            try:
                await pubsub_call(self._pubsub.unsubscribe(channel))
            except (RedisError, Unavailable) as exc:  # harmless: messages of unfollowed channels are dropped
                log.warning("event log tail: unsubscribe failed: %s", exc)

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is not None and not self._dispatcher.done():
            self._wake.set()
            return
        if self._dispatcher is not None:
            self._report_crash(self._dispatcher)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="eventlog-tail-dispatcher")

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("event log tail dispatcher crashed", exc_info=exc)

    async def _dispatch(self) -> None:
        """Read the shared subscription and copy each message to the followers of its scope."""
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # one redis-py dropped (see redis_call)
            if not self._pubsub.subscribed:
                # Never read without a subscription: redis-py's subscribe() then
                # health-checks the connection with its own read (see control.py).
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=_READ_SECONDS)
            except RedisError as exc:
                # redis-py reconnects and re-subscribes on the next read; each
                # confirmation then tells the scope's followers to re-read.
                log.warning("event log tail: %s; reconnecting", exc)
                await self._tell_if_unreachable()
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            if message is not None:
                self._handle(message)
            now = asyncio.get_running_loop().time()
            if now >= self._next_sweep:
                self._sweep(now)

    async def _tell_if_unreachable(self) -> None:
        """After a failed read: if Redis itself does not answer, end every follower's read at once.

        A lost pub/sub connection alone is re-established and made up for by a re-read
        (``RESYNC``); a Redis that is down would leave every stream waiting unseen until its
        client's deadline, so its readers are told instead (and fail UNAVAILABLE).
        """
        if await redis_down(self._redis, within=_READ_SECONDS):
            for feed in self._feeds.values():
                for follower in feed.followers:
                    follower.push(UNREACHABLE)

    def _sweep(self, now: float) -> None:
        """Ask the followers of scopes quiet for ``quiet_seconds`` to check theirs still exists."""
        for feed in self._feeds.values():
            if now - feed.active >= self._quiet_seconds:
                feed.active = now
                for follower in feed.followers:
                    follower.push(VERIFY)
        # A quiet scope is noticed within a quarter of quiet_seconds (at most a minute) more.
        self._next_sweep = now + min(max(self._quiet_seconds / 4, _READ_SECONDS), 60.0)

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        feed = self._feeds.get(channel)
        if kind == "message":
            if feed is None:
                return
            feed.active = asyncio.get_running_loop().time()
            try:
                parsed = parse_tail_message(message["data"])
            except ValueError:
                log.error("event log tail: malformed message on %r", channel)
                parsed = RESYNC
            for follower in feed.followers:
                if isinstance(parsed, list):
                    for entry in parsed:
                        follower.push(entry)
                else:
                    follower.push(parsed)
        elif kind == "subscribe":
            waiting = self._unconfirmed.get(channel, 0)
            if waiting > 1:
                self._unconfirmed[channel] = waiting - 1
                return  # an earlier SUBSCRIBE's confirmation; ours is still to come
            self._unconfirmed.pop(channel, None)
            if feed is None:
                return
            if not feed.confirmed.done():
                feed.confirmed.set_result(None)
            else:  # redis-py re-subscribed after a reconnect: notices may have been lost meanwhile
                for follower in feed.followers:
                    follower.push(RESYNC)
