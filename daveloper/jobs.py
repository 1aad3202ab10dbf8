"""Background work that outlives the RPC that started it (ingestions, scrapes, chat turns).

A job keeps running when its client disconnects; it stops when it finishes,
is cancelled through the event log's control channel, or the process shuts
down. :class:`BackgroundJobs` owns those tasks so none is ever orphaned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from daveloper.errors import DaveloperError, translated

__all__ = ["BackgroundJobs"]

log = logging.getLogger("daveloper.jobs")

T = TypeVar("T")


class BackgroundJobs:
    """Owns background tasks: spawns them, logs what escapes them, cancels the rest at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
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

    async def shielded(self, work: Coroutine[Any, Any, T], *, name: str) -> T:
        """Run ``work`` to its end even if the caller is cancelled meanwhile; its result, if the caller stays.

        For steps that must not stop half-way when a client leaves (a turn's start: its
        records, leases and start event are written together or not at all). The task is
        a job like any other: :meth:`aclose` cancels it at shutdown. A failure is the
        caller's to handle; once the caller has left, it is logged like a job's.
        """
        if self._closed:
            work.close()
            raise RuntimeError("background jobs are closed")
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_left_behind)  # nobody awaits it any more: report what escapes it
            raise

    def _done(self, task: asyncio.Task[Any]) -> None:
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


def _left_behind(task: asyncio.Task[Any]) -> None:
    """The end of a shielded step whose caller left: a refusal is normal, anything else a fault."""
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(translated(exc), DaveloperError):  # a refusal, or a dependency away (Redis restarting)
        log.info("%s ended after its caller left: %s", task.get_name(), exc)
    else:
        log.error("%s failed after its caller left", task.get_name(), exc_info=exc)
