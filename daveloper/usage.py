"""A session's usage for ``GetSession``: its quotas with their use and its rate limits, in one Redis round trip.

Each figure comes from one read-only command (a usage hash, a lease set, a
counter, the session's bucket hash). The owners of the data name their keys;
this module only queues the reads on one pipeline and turns the replies into
messages, so ``GetSession`` costs one round trip and no write at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from generated.daveloper.v1 import Quota, RateLimit

__all__ = ["QuotaReading", "SessionUsage", "count_leases", "counter", "hash_fields"]

#: Queues one read for a session on a pipeline.
Queue = Callable[[Any, str], object]


@dataclass(frozen=True, slots=True)
class QuotaReading:
    """Quotas figured from one queued read: ``queue(pipe, session_id)``, then ``quotas(reply)``."""

    queue: Queue
    quotas: Callable[[Any], list[Quota]]


def hash_fields(key: Callable[[str], str], fields: Sequence[str],
                quotas: Callable[[list[int]], list[Quota]]) -> QuotaReading:
    """Quotas from integer fields of one hash (absent counts as 0)."""
    def parse(reply: Any) -> list[Quota]:
        return quotas([int(value or 0) for value in reply])
    return QuotaReading(lambda pipe, session_id: pipe.hmget(key(session_id), list(fields)), parse)


def counter(key: Callable[[str], str], name: str, limit: Callable[[], int]) -> QuotaReading:
    """A quota whose use is an integer string key (absent counts as 0)."""
    return QuotaReading(lambda pipe, session_id: pipe.get(key(session_id)),
                        lambda reply: [Quota(name=name, limit=limit(), used=int(reply or 0))])


def count_leases(key: Callable[[str], str], name: str, limit: Callable[[], int]) -> QuotaReading:
    """A quota whose use is the unexpired members of a lease set (a sorted set scored by expiry)."""
    return QuotaReading(lambda pipe, session_id: pipe.zcount(key(session_id), time.time(), "+inf"),
                        lambda reply: [Quota(name=name, limit=limit(), used=int(reply))])


class SessionUsage:
    """Reads a session's quotas and rate limits together (see the module docstring)."""

    def __init__(self, pipeline: Callable[[], Any], quotas: Sequence[QuotaReading],
                 queue_rate_limits: Queue, rate_limits: Callable[[str, Any], list[RateLimit]]) -> None:
        #: A non-transactional pipeline on the Redis that holds every figure.
        self._pipeline = pipeline
        self._quotas = list(quotas)
        self._queue_rate_limits = queue_rate_limits
        self._rate_limits = rate_limits

    async def read(self, session_id: str) -> tuple[list[Quota], list[RateLimit]]:
        """The session's quotas with their use and its rate limits with what is available now."""
        async with self._pipeline() as pipe:
            for reading in self._quotas:
                reading.queue(pipe, session_id)
            self._queue_rate_limits(pipe, session_id)
            *replies, limits = await pipe.execute()
        quotas = [quota for reading, reply in zip(self._quotas, replies, strict=True)
                  for quota in reading.quotas(reply)]
        return quotas, self._rate_limits(session_id, limits)
