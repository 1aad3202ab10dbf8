"""A turn's events handed straight to the stream that started it, when both are on this instance.

The ``Chat`` stream that starts a turn sends that turn's events. They are on the
conversation's log (the source of truth, which ``Watch`` and a resumed stream
read), but reading them back from there costs the stream a state read, a tail
subscription, a replay and an unsubscribe per turn, and every event a trip
through pub/sub. The instance running the turn already has each event, with
its seq, the moment its append returns: :class:`TurnFeed` carries them to the
stream in process, in seq order.

The feed is only a shortcut: when the turn stops running here without its last
event having been appended here (a failed append, a lost lease: another
instance may then end the turn), or the stream falls :data:`MAX_PENDING` events
behind, the feed ends and the stream reads the log on from its cursor.
"""

from __future__ import annotations

import asyncio
from collections import deque

from daveloper.eventlog import Entry

__all__ = ["MAX_PENDING", "TurnFeed"]

#: Events a feed holds for a stream that does not keep up before it gives up (the log has them all).
MAX_PENDING = 256


class TurnFeed:
    """One turn's appended events, in seq order, for one reader; each item says whether it ends the turn."""

    __slots__ = ("_closed", "_pending", "_wake")

    def __init__(self) -> None:
        self._pending: deque[tuple[Entry, bool]] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def push(self, first_seq: int, payloads: list[bytes], *, ends_turn: bool) -> None:
        """Payloads appended with consecutive seqs from ``first_seq``; ``ends_turn``: the last is the turn's end."""
        if self._closed:
            return
        if len(self._pending) + len(payloads) > MAX_PENDING:
            self.close()  # the reader is too far behind: it reads the log instead
            return
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            self._pending.append((Entry(first_seq + i, payload), ends_turn and i == last))
        self._wake.set()

    def close(self) -> None:
        """No more events come this way (the turn ended here, or the reader fell behind, or left)."""
        if not self._closed:
            self._closed = True
            self._wake.set()

    async def next(self) -> tuple[Entry, bool] | None:
        """The next event and whether it ends the turn; None once the feed has ended (read the log after it)."""
        while not self._pending:
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._pending.popleft()
