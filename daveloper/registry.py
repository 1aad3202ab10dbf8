"""Service discovery through Redis: gRPC instances register with a heartbeat lease, edges list the live ones.

Each gRPC instance adds its advertised address to one sorted set, scored by
when its lease ends, and renews it every ``ttl / 3``. An instance that stops
renewing (killed, partitioned) drops out of the listing after ``ttl``; one
that drains removes itself first, so edges stop sending it new calls before it
refuses them. Edges re-read the listing every few seconds
(:meth:`InstanceRegistry.follow`) and hand it to their upstream balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from daveloper.config import Address
from daveloper.errors import DaveloperError
from daveloper.infra.redis import redis_call, reply_text
from daveloper.keys import Keys

__all__ = ["InstanceRegistry"]

log = logging.getLogger("daveloper.registry")


class InstanceRegistry:
    """The set of live gRPC instances, shared by every instance and edge on one Redis."""

    def __init__(self, redis: aioredis.Redis, *, ttl_seconds: float = 10.0, prefix: str = "dv:") -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds
        self._key = Keys(prefix).instances

    async def register(self, addr: Address) -> None:
        """Add (or renew) ``addr`` for one lease period."""
        await redis_call(self._redis.zadd(self._key, {str(addr): time.time() + self.ttl_seconds}))

    async def deregister(self, addr: Address) -> None:
        await redis_call(self._redis.zrem(self._key, str(addr)))

    async def live(self) -> list[Address]:
        """Instances whose lease has not ended, in address order; lapsed ones are removed."""
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self._key, "-inf", now)
            pipe.zrangebyscore(self._key, now, "+inf")
            _, members = await redis_call(pipe.execute())
        return sorted(Address.parse(reply_text(m)) for m in members)

    async def heartbeat(self, addr: Address) -> None:
        """Keep ``addr`` registered until cancelled (then deregister it); a failed beat is retried."""
        try:
            while True:
                try:
                    await self.register(addr)
                except (DaveloperError, aioredis.RedisError) as exc:
                    log.warning("registry heartbeat failed: %s", exc)
                await asyncio.sleep(self.ttl_seconds / 3)
        finally:
            # If this fails the lease lapses on its own.
            with contextlib.suppress(DaveloperError, aioredis.RedisError, asyncio.CancelledError):
                await asyncio.shield(self.deregister(addr))

    async def follow(self, apply: Callable[[Sequence[Address]], None], *, static: Sequence[Address] = (),
                     interval: float = 2.0) -> None:
        """Call ``apply(static + live instances)`` whenever the listing changes, until cancelled.

        When Redis cannot be read the last listing stays in force.
        """
        current: list[Address] | None = None
        while True:
            try:
                listing = list(dict.fromkeys([*static, *await self.live()]))
            except (DaveloperError, aioredis.RedisError) as exc:
                log.warning("registry unreadable, keeping %d upstreams: %s", len(current or ()), exc)
            else:
                if listing != current:
                    log.info("upstreams changed", extra={"upstreams": [str(a) for a in listing]})
                    current = listing
                    apply(listing)
            await asyncio.sleep(interval)
