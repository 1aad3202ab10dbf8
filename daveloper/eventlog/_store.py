"""How the event log names its Redis keys, and how it awaits Redis."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio.connection import AbstractConnection, ConnectionPool

from daveloper.errors import InvalidArgument
from daveloper.infra.redis import redis_call

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


def socket_timeout(pool: ConnectionPool) -> float | None:
    """The read timeout of the pool's connections; redis-py's default (5 s) unless one was given."""
    if "socket_timeout" in pool.connection_kwargs:
        return pool.connection_kwargs["socket_timeout"]  # type: ignore[no-any-return]
    default = inspect.signature(AbstractConnection.__init__).parameters["socket_timeout"].default
    return default if isinstance(default, int | float) else None
