"""Coalescing a model's text deltas into few events, by loop time and size, not by event count.

A model may stream a token every few microseconds; one event (one Redis append,
one message per listening stream) per token would cost more than the token.
:class:`TextCoalescer` takes text as it arrives without waiting, and a flusher
task writes what is pending as one event once ``seconds`` have passed since the
oldest pending piece (by the loop's clock) or ``chars`` are pending. At the end
of a model round, :meth:`TextCoalescer.take` hands the rest to the caller, which
writes it in the same append as its next event.

While a flush is being written, later text keeps accumulating, and the next
flush takes all of it: when the loop is busy, events grow instead of shrinking
to a token or two each, so the event rate stays bounded however loaded the
server is. The concatenated text is exactly what the model sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

__all__ = ["TextCoalescer"]


class TextCoalescer:
    """Batches text for ``emit``; use as ``async with``, :meth:`add` text, then :meth:`drain` before other events.

    ``immediate_first``: the first text flushes at once (a turn's time to first
    token should not wait for the window).
    """

    def __init__(self, emit: Callable[[str], Awaitable[object]], *, chars: int, seconds: float,
                 immediate_first: bool = False) -> None:
        self._emit = emit
        self._chars = chars
        self._seconds = seconds
        self._pending: list[str] = []
        self._size = 0
        self._since = 0.0
        self._immediate = immediate_first
        self._loop = asyncio.get_running_loop()
        #: Set when text is pending (the flusher starts its window).
        self._wake = asyncio.Event()
        #: Set when the window should end early: size reached, or draining.
        self._now = asyncio.Event()
        self._closing = False
        self._taking = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TextCoalescer:
        self._task = asyncio.create_task(self._flusher(), name="coalesce")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # neither raises its CancelledError nor swallows one aimed at us

    def add(self, text: str) -> None:
        """Queue ``text`` for the next event (never waits); raises if an earlier flush failed."""
        task = self._task
        if task is not None and task.done():
            task.result()  # the flusher stopped: its error (or the coalescer is closed)
            raise RuntimeError("the coalescer is closed")
        if not text:
            return
        if not self._pending:
            self._since = self._loop.time()
            self._wake.set()
        self._pending.append(text)
        self._size += len(text)
        if self._size >= self._chars or self._immediate:
            self._immediate = False
            self._now.set()

    async def drain(self) -> None:
        """Write what is pending and stop the flusher (its error, if a flush failed, is raised here)."""
        self._closing = True
        self._wake.set()
        self._now.set()
        if self._task is not None:
            await self._task

    async def take(self) -> str:
        """Stop the flusher (after a write in flight) and return the text not yet written.

        For the caller to write together with its next event, in one append: a turn's last
        text and its ``turn_completed``, or the text before a tool call and the call.
        """
        self._taking = True
        self._wake.set()
        self._now.set()
        if self._task is not None:
            await self._task
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        return text

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            if self._taking:
                return
            if not self._now.is_set():
                delay = self._since + self._seconds - self._loop.time()
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            await self._now.wait()
                    except TimeoutError:
                        pass
            if self._taking:
                return
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self._size = 0
                self._now.clear()
                self._wake.clear()
                await self._emit(text)
                if self._pending:  # arrived during the write: its window runs from its own arrival
                    self._wake.set()
                    if self._size >= self._chars:
                        self._now.set()
            else:
                self._wake.clear()
            if self._closing:
                if not self._pending:
                    return
                self._now.set()
