"""How the event log names its Redis keys, and how it awaits Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from daveloper.errors import InvalidArgument
from daveloper.infra.redis import redis_call

__all__ = ["ScopeKeys", "redis_call"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """The Redis names that belong to one scope (layout in the package docstring)."""

    stream: str
    meta: str
    cancel: str
    channel: bytes
    tail: bytes

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
            tail=f"{prefix}tail:{scope}".encode(),
        )
