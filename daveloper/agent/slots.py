"""A session's concurrent-turn slots (``quota_concurrent_turns``), counted across instances: a lease per running turn.

A turn takes its slot with its admission reads (:meth:`TurnSlots.acquire_command`, sent with
them) and frees it before its client can see the turn end, since the client may send its next
message at once (:meth:`TurnSlots.release_ahead`):

* on one server the release is queued on the command batcher ahead of the final event's append
  and goes out in the same pipeline, on one connection, so the server runs it first;
* on a cluster the slot and the conversation's log live on different nodes, so the release is a
  round trip of its own, before the end.

A release that fails is retried while Redis restarts, then left to lapse (the lease's TTL).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daveloper.agent.retry import retry_unavailable
from daveloper.errors import Unavailable
from daveloper.infra.batching import CommandBatcher
from daveloper.infra.redis import redis_call
from daveloper.leases import LeaseSet

__all__ = ["TurnSlots"]

log = logging.getLogger("daveloper.agent")


class TurnSlots:
    """The turn leases of ``leases`` (None: not counted), released through ``batch`` where order allows."""

    def __init__(self, leases: LeaseSet | None, batch: CommandBatcher, *, clustered: bool,
                 retry_seconds: float) -> None:
        self._leases = leases
        self._batch = batch
        self._clustered = clustered
        self._retry_seconds = retry_seconds

    def acquire_command(self, session_id: str, turn_id: str, limit: int) -> tuple[Any, ...] | None:
        """The command taking a slot (its reply is true if taken); None when slots are not counted."""
        if self._leases is None or limit <= 0:
            return None
        return self._leases.acquire_command(session_id, turn_id, limit)

    async def release(self, session_id: str, turn_id: str) -> None:
        """Free a turn's slot now (retried through a Redis restart; else it lapses)."""
        leases = self._leases
        if leases is None:
            return
        try:
            await retry_unavailable(lambda: redis_call(leases.release(session_id, turn_id)),
                                    seconds=self._retry_seconds, what="turn slot release")
        except Unavailable as exc:
            log.warning("a turn's slot was not released (it lapses by itself): %s", exc, extra={"turn_id": turn_id})

    async def release_ahead(self, session_id: str, turn_id: str) -> asyncio.Future[Any] | None:
        """Free a turn's slot ahead of the commands queued next (its final event); pass what it returns
        to :meth:`settle` once they are written (None: nothing to settle)."""
        if self._leases is None:
            return None
        if self._clustered:
            await asyncio.shield(self.release(session_id, turn_id))
            return None
        return self._leases.release_queued(self._batch, session_id, turn_id)

    async def settle(self, session_id: str, turn_id: str, queued: asyncio.Future[Any]) -> None:
        """Wait for a queued release; if Redis failed it, release again."""
        try:
            await redis_call(queued)
        except Unavailable:
            await self.release(session_id, turn_id)
