"""Riding out a Redis restart: a turn's writes are retried for a bounded time before the turn gives up.

A turn streams for seconds to minutes; Redis (or Valkey) restarting for a few
seconds meanwhile should not fail it. Each write of a turn is retried while
Redis does not answer (``Unavailable``), with a doubling pause, until
``seconds`` have passed; then the error goes up and the turn fails (or, if even
that cannot be written, its work lease lapses and another round of the lease
reaper fails it: see :mod:`daveloper.ownership`). Writes retried this way must
be idempotent: event appends carry their writer's batch number
(:meth:`daveloper.eventlog.EventLog.append_many`), record writes are plain SETs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from daveloper.errors import Unavailable

__all__ = ["retry_unavailable"]

log = logging.getLogger("daveloper.agent")

T = TypeVar("T")

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0


async def retry_unavailable(write: Callable[[], Awaitable[T]], *, seconds: float, what: str,
                            retry_if: Callable[[], bool] | None = None) -> T:
    """``await write()``, again after a pause each time it raises ``Unavailable``, for up to ``seconds``
    (and only while ``retry_if()``, when given, says a retry is safe)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pause = _FIRST_PAUSE
    while True:
        try:
            return await write()
        except Unavailable as exc:
            if loop.time() + pause > deadline or (retry_if is not None and not retry_if()):
                raise
            log.info("%s: Redis unavailable, retrying in %.2fs: %s", what, pause, exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
