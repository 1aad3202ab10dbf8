"""Background work that outlives the RPC that started it (ingestions, scrapes, chat turns).

A job keeps running when its client disconnects; it stops when it finishes,
is cancelled through the event log's control channel, or the process shuts
down. :class:`BackgroundJobs` owns those tasks so none is ever orphaned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundJobs"]

log = logging.getLogger("daveloper.jobs")


class BackgroundJobs:
    """Owns background tasks: spawns them, logs what escapes them, cancels the rest at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``work`` in the background; jobs record their own failures, this only logs leaks."""
        if self._closed:
            work.close()
            raise RuntimeError("background jobs are closed")
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background job %s failed", task.get_name(), exc_info=exc)

    async def idle(self) -> None:
        """Wait until no job is running (bound it with ``asyncio.timeout``)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Cancel every job still running and wait for each to record its end."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
