"""Work owned by an instance, leased in Redis, so the work of an instance that died is finished by another.

A chat turn, a scraper job or an ingestion runs in the background of the
instance that started it, and its watchers wait for its final event. If that
instance dies (SIGKILL, a lost machine), nothing would ever write that event.
So each piece of work holds a lease: a member of one sorted set scored by its
expiry, with what is needed to finish it (session, ids) in a hash beside it.
The owner renews all its leases in one call every ``ttl / 3``; every instance
also looks for leases that lapsed and claims each one atomically (only one
instance gets it), then hands it to the handler registered for its kind, which
marks the work failed (reason ``OWNER_LOST``) or resumes it where that is safe.

The bound: work whose owner died is finished within ``ttl`` plus one reap
interval (``ttl / 3``).

An owner that is alive but whose work is stuck (a model stream that stalls
after its first tokens, a fetch or a client that never answers) keeps renewing
the lease, so the same rounds also watch progress: work run inside
:meth:`WorkLeases.watch` that appends no event for ``stall_seconds`` is
cancelled where it runs and fails like a lost owner's, ``UNAVAILABLE`` with
reason ``NO_PROGRESS`` (keepalives sent to a stream's client are not events,
so they do not count).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

from daveloper.errors import DaveloperError, Unavailable
from daveloper.infra.redis import redis_call, reply_text
from daveloper.keys import Keys
from daveloper.metrics import Metrics

__all__ = ["NoProgress", "OrphanHandler", "WorkLeases"]

log = logging.getLogger("daveloper.ownership")

OrphanHandler = Callable[[Mapping[str, str]], Awaitable[None]]

# KEYS: the lease set, the data hash; ARGV: now, max. Claims (removes) up to max lapsed leases and
# returns member, data pairs: one instance gets each lapsed lease.
_CLAIM_LAPSED = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(members) do
  redis.call('ZREM', KEYS[1], member)
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or '{}'
  redis.call('HDEL', KEYS[2], member)
end
return out
"""


class NoProgress(Unavailable):
    """Work that appended no event for its bound was stopped (reason ``NO_PROGRESS``)."""

    default_reason = "NO_PROGRESS"


class _Watch:
    """One piece of work under :meth:`WorkLeases.watch`: its task, and when its progress value last changed."""

    def __init__(self, what: str, progress: Callable[[], object], now: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.what, self.progress = task, what, progress
        self.cancelling = task.cancelling()
        self.seen, self.since, self.stopped = progress(), now, False

    def stalled(self, now: float, bound: float) -> bool:
        """Cancel the task if its progress value has not changed for ``bound`` seconds; whether it did."""
        value = self.progress()
        if value != self.seen:
            self.seen, self.since = value, now
            return False
        if now - self.since < bound:
            return False
        # Again after another bound if the cancel was swallowed and the work still makes none.
        self.since, self.stopped = now, True
        self.task.cancel()
        return True


class WorkLeases:
    """Leases on this instance's work, their renewal, and the reaping of other instances' lapsed work."""

    def __init__(self, redis: aioredis.Redis, *, owner: str, ttl_seconds: float = 15.0, prefix: str = "dv:",
                 batch: int = 100, stall_seconds: float = 600.0, metrics: Metrics | None = None) -> None:
        self._redis = redis
        metrics = metrics if metrics is not None else Metrics()
        self._reaped, self._stalled = metrics.work_reaped, metrics.work_stalled
        self._owner = owner
        self.ttl_seconds = ttl_seconds
        #: Watched work that appends no event for this long is stopped (``NoProgress``); 0: never.
        self.stall_seconds = stall_seconds
        self._watched: dict[str, _Watch] = {}
        # One hash tag ({work}): claims and releases write both in one transaction.
        self._set, self._data = Keys(prefix).work, Keys(prefix).work_data
        self._claim_lapsed = redis.register_script(_CLAIM_LAPSED)
        self._batch = batch
        self._owned: set[str] = set()
        self._handlers: dict[str, OrphanHandler] = {}

    def on_orphan(self, kind: str, handler: OrphanHandler) -> None:
        """Call ``handler(fields)`` for each piece of ``kind`` work whose owner stopped renewing it."""
        self._handlers[kind] = handler

    @staticmethod
    def _member(kind: str, work_id: str) -> str:
        return f"{kind}:{work_id}"

    async def claim(self, kind: str, work_id: str, **fields: str) -> None:
        """Lease ``work_id`` to this instance; ``fields`` are what a handler needs to finish it."""
        member = self._member(kind, work_id)
        data = json.dumps({**fields, "kind": kind, "id": work_id, "owner": self._owner})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._data, member, data)
            pipe.zadd(self._set, {member: time.time() + self.ttl_seconds})
            await redis_call(pipe.execute())
        self._owned.add(member)

    def claim_commands(self, kind: str, work_id: str, **fields: str) -> list[tuple[Any, ...]]:
        """:meth:`claim` as commands, each ``(name, key, *args)``, for the caller to apply with its own writes
        (:meth:`CommandBatcher.atomic <daveloper.infra.batching.CommandBatcher.atomic>`).

        The lease counts as owned at once; if the writes fail, the caller calls :meth:`release`.
        """
        member = self._member(kind, work_id)
        self._owned.add(member)
        return [("HSET", self._data, member, json.dumps({**fields, "kind": kind, "id": work_id, "owner": self._owner})),
                ("ZADD", self._set, time.time() + self.ttl_seconds, member)]

    async def release(self, kind: str, work_id: str) -> None:
        """The work ended (its final event is written): drop the lease.

        If Redis does not answer, the lease is left to lapse (it is no longer renewed): the reaper
        then hands it to its handler, which finds the work ended and only tidies up. The caller's
        end stands either way, so the failure is not raised.
        """
        member = self._member(kind, work_id)
        self._owned.discard(member)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._set, member)
                pipe.hdel(self._data, member)
                await redis_call(pipe.execute())
        except Unavailable as exc:
            log.info("a work lease was left to lapse: %s", exc, extra={"work": member})

    def release_commands(self, kind: str, work_id: str) -> list[tuple[Any, ...]]:
        """:meth:`release` as commands, to send with the work's last writes; the lease is no longer renewed."""
        member = self._member(kind, work_id)
        self._owned.discard(member)
        return [("ZREM", self._set, member), ("HDEL", self._data, member)]

    def disown(self, kind: str, work_id: str) -> None:
        """Stop renewing a lease whose work could not record its end: it lapses and the reaper finishes it."""
        self._owned.discard(self._member(kind, work_id))

    @contextlib.asynccontextmanager
    async def watch(self, kind: str, work_id: str, progress: Callable[[], object]) -> AsyncIterator[None]:
        """Run the body as ``kind`` work that must make progress: ``progress()`` (cheap; called each round)
        changes whenever the work appends an event. If it stays the same for ``stall_seconds``, the
        body's task is cancelled and :class:`NoProgress` raised here, for the work to fail with.

        The check runs in :meth:`run`'s rounds, every ``ttl / 3``, so the work stops within
        ``stall_seconds`` plus a round of its last event.
        """
        if not self.stall_seconds:
            yield
            return
        member = self._member(kind, work_id)
        watch = self._watched[member] = _Watch(member, progress, time.monotonic())
        try:
            yield
        except asyncio.CancelledError as exc:
            # Ours, and nobody else's (like asyncio.timeout): the work stops with a reason; a cancel
            # from elsewhere (shutdown, the caller) goes on as it came.
            if watch.stopped and watch.task.uncancel() <= watch.cancelling:
                raise NoProgress(f"the {kind} made no progress for {self.stall_seconds:g} s and was stopped; "
                                 "try again", retry_after=0, metadata={"seconds": f"{self.stall_seconds:g}"}) from exc
            raise
        finally:
            del self._watched[member]

    def check_progress(self) -> int:
        """Stop watched work whose progress stalled for ``stall_seconds``; how many were stopped."""
        now, stopped = time.monotonic(), 0
        for watch in list(self._watched.values()):
            if watch.stalled(now, self.stall_seconds):
                stopped += 1
                self._stalled.labels(watch.what.partition(":")[0]).inc()
                log.warning("work made no progress: stopped", extra={"work": watch.what,
                                                                    "seconds": self.stall_seconds})
        return stopped

    @property
    def owned(self) -> int:
        return len(self._owned)

    async def renew(self) -> None:
        """Push every owned lease's expiry forward (leases already claimed by a reaper stay gone)."""
        if self._owned:
            expiry = time.time() + self.ttl_seconds
            await redis_call(self._redis.zadd(self._set, dict.fromkeys(self._owned, expiry), xx=True))

    async def reap(self) -> int:
        """Claim lapsed leases of any instance and hand each to its kind's handler; returns how many."""
        reply = await redis_call(self._claim_lapsed(keys=[self._set, self._data], args=[time.time(), self._batch]))
        pairs = list(reply)
        for member, raw in zip(pairs[::2], pairs[1::2], strict=True):
            fields: dict[str, str] = json.loads(reply_text(raw))
            handler = self._handlers.get(fields.get("kind", ""))
            if handler is None:
                log.warning("no handler for lapsed work %s", reply_text(member))
                continue
            log.warning("work of a lost instance", extra={"work": reply_text(member), "owner": fields.get("owner")})
            self._reaped.labels(fields["kind"]).inc()
            try:
                await handler(fields)
            except (DaveloperError, aioredis.RedisError) as exc:
                # Put it back to be tried again on the next round (by any instance).
                log.warning("finishing lapsed work failed: %s", exc, extra={"work": reply_text(member)})
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._data, member, json.dumps(fields))
                    pipe.zadd(self._set, {member: time.time()})
                    await redis_call(pipe.execute())
        return len(pairs) // 2

    async def run(self) -> None:
        """Every ``ttl / 3`` until cancelled: stop stalled work, renew, reap; a failed round is logged and retried."""
        while True:
            await asyncio.sleep(self.ttl_seconds / 3)
            self.check_progress()  # no Redis: it runs while Redis is away too
            try:
                await self.renew()
                while await self.reap() >= self._batch:
                    pass
            except (DaveloperError, aioredis.RedisError) as exc:
                log.warning("work lease round failed: %s", exc)
