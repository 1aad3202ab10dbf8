"""How the event log names its Redis keys, and how it awaits Redis."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daveloper.errors import InvalidArgument, Unavailable

__all__ = ["ScopeKeys", "redis_call", "socket_timeout"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """The Redis names that belong to one scope (layout in the package docstring)."""

    stream: str
    meta: str
    cancel: str
    channel: bytes

    @classmethod
    def of(cls, prefix: str, scope: str) -> ScopeKeys:
        if not scope:
            raise InvalidArgument.field("scope", "must not be empty")
        return cls(
            stream=f"{prefix}log:{scope}",
            meta=f"{prefix}logmeta:{scope}",
            cancel=f"{prefix}cancel:{scope}",
            # bytes, because that is how the (non-decoding) pub/sub client reports channels
            channel=f"{prefix}control:{scope}".encode(),
        )


async def redis_call(call: Awaitable[T]) -> T:
    """Await one redis-py call: "cannot reach Redis" becomes ``Unavailable``, and no cancel is lost.

    Other Redis errors (a bad command, a script error) are bugs and stay what they are.

    On Python 3.11 redis-py's ``asyncio.wait_for`` around socket writes drops a
    cancel that arrives just as the write completes (CPython bpo-42130, fixed in
    3.12): the call returns normally and the task runs on as if never
    cancelled, e.g. a reader would keep tailing for a client that is gone. A
    cancel requested during the call that did not surface is raised here.
    """
    task = asyncio.current_task()
    requested = task.cancelling() if task is not None else 0
    try:
        result = await call
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise Unavailable(f"event log store unavailable: {exc}", retry_after=1.0) from exc
    if task is not None and task.cancelling() > requested:
        raise asyncio.CancelledError
    return result


def socket_timeout(pool: ConnectionPool) -> float | None:
    """The read timeout of the pool's connections; redis-py's default (5 s) unless one was given."""
    if "socket_timeout" in pool.connection_kwargs:
        return pool.connection_kwargs["socket_timeout"]  # type: ignore[no-any-return]
    default = inspect.signature(AbstractConnection.__init__).parameters["socket_timeout"].default
    return default if isinstance(default, int | float) else None
