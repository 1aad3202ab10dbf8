"""Coalescing a model's text deltas into few events, by loop time and size, not by event count.

A model may stream a token every few microseconds; one event (one Redis append,
one message per listening stream) per token would cost more than the token.
:class:`TextCoalescer` takes text as it arrives without waiting, and writes what
is pending as one event once ``seconds`` have passed since the oldest pending
piece (a timer on the loop's clock) or ``chars`` are pending. At the end of a
model round, :meth:`TextCoalescer.take` hands the rest to the caller, which
writes it in the same append as its next event.

While a write is in flight, later text keeps accumulating, and the next write
takes all of it: when the loop is busy, events grow instead of shrinking to a
token or two each, so the event rate stays bounded however loaded the server is.
The concatenated text is exactly what the model sent.

No task waits between writes: a timer starts each window and a task lives only
while its write does. A turn that streams holds a timer handle and its pending
text, and :meth:`TextCoalescer.take` returns at once unless a write is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

__all__ = ["TextCoalescer"]


class TextCoalescer:
    """Batches text for ``emit``; use as ``async with``, :meth:`add` text, then :meth:`take` the rest.

    ``immediate_first``: the first text is written at once (a turn's time to first
    token should not wait for the window).
    """

    def __init__(self, emit: Callable[[str], Awaitable[object]], *, chars: int, seconds: float,
                 immediate_first: bool = False) -> None:
        self._emit = emit
        self._chars = chars
        self._seconds = seconds
        self._pending: list[str] = []
        self._size = 0
        #: Loop time of the oldest pending piece.
        self._since = 0.0
        self._immediate = immediate_first
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._write: asyncio.Task[None] | None = None
        #: The text of the write scheduled last, and whether that write has started.
        self._scheduled = ""
        self._writing = False
        self._failure: BaseException | None = None
        self._taken = False

    async def __aenter__(self) -> TextCoalescer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._taken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        write = self._write
        if write is not None and not write.done():
            write.cancel()
            await asyncio.wait([write])  # neither raises its CancelledError nor swallows one aimed at us

    def add(self, text: str) -> None:
        """Queue ``text`` for the next event (never waits); raises if an earlier write failed."""
        if self._failure is not None:
            raise self._failure
        if self._taken:
            raise RuntimeError("the coalescer is closed")
        if not text:
            return
        if not self._pending:
            self._since = self._loop.time()
        self._pending.append(text)
        self._size += len(text)
        if self._write is not None:
            return  # the write in flight schedules the next one when it is done
        if self._size >= self._chars or self._immediate:
            self._immediate = False
            self._start_write()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._since + self._seconds, self._window_ended)

    async def take(self) -> str:
        """Stop writing (after a write in flight) and return the text not yet written.

        For the caller to write together with its next event, in one append: a turn's last
        text and its ``turn_completed``, or the text before a tool call and the call.
        """
        self._taken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._write is not None and not self._writing:
            # Scheduled but not started: its text goes back, to the caller's append (one fewer).
            self._write.cancel()
            self._write = None
            self._pending.insert(0, self._scheduled)
        if self._write is not None:
            await asyncio.shield(self._write)
        if self._failure is not None:
            raise self._failure
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        return text

    def _window_ended(self) -> None:
        self._timer = None
        if self._pending and self._write is None and not self._taken:
            self._start_write()

    def _start_write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._scheduled = text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._writing = False
        self._write = self._loop.create_task(self._written(text), name="coalesce")

    async def _written(self, text: str) -> None:
        self._writing = True
        try:
            await self._emit(text)
        except Exception as exc:
            self._failure = exc
            return  # raised to the next add() or take()
        finally:
            self._write = None
        if self._pending and not self._taken:  # arrived during the write: its window runs from its own arrival
            if self._size >= self._chars or self._loop.time() >= self._since + self._seconds:
                self._start_write()
            else:
                self._timer = self._loop.call_at(self._since + self._seconds, self._window_ended)
