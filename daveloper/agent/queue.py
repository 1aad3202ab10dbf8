"""Turns of one conversation run one at a time, in arrival order.

A turn's model reads the conversation's history, so a second message sent while
the first is still answering must wait for that answer: otherwise it misses it,
and the two turns' events interleave on the conversation's log. Each turn joins
its conversation's queue when it is admitted (before any await, so in the order
the messages arrived) and waits for the turn ahead of it to end (its final event
and record written) before its own start event goes on the log. So a
conversation's log holds one turn's events after another, never interleaved.

The queue is this instance's: two instances taking messages for one
conversation at the same moment are not ordered with each other (a client
sends a conversation's messages on one stream, which one instance serves).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["ConversationQueue", "QueuePlace"]


@dataclass(eq=False)
class QueuePlace:
    """A turn's place in its conversation's queue."""

    scope: str
    #: Every event of this turn has a seq above this one (known at once, even while it waits).
    after_seq: int = 0
    #: The place ahead, until this turn's wait for it is over.
    ahead: QueuePlace | None = None
    left: asyncio.Event = field(default_factory=asyncio.Event)


class ConversationQueue:
    """The last admitted turn of every conversation with a turn running here."""

    def __init__(self) -> None:
        self._last: dict[str, QueuePlace] = {}

    def __len__(self) -> int:
        return len(self._last)

    def join(self, scope: str) -> QueuePlace:
        """A place behind the conversation's last turn (no await: places follow the calls' order)."""
        place = QueuePlace(scope, ahead=self._last.get(scope))
        if place.ahead is not None:
            place.after_seq = place.ahead.after_seq
        self._last[scope] = place
        return place

    async def wait(self, place: QueuePlace) -> None:
        """Until the turn ahead has left the queue."""
        if place.ahead is not None:
            await place.ahead.left.wait()
            place.ahead = None  # a long queue keeps no chain of finished places

    def leave(self, place: QueuePlace) -> None:
        """The turn ended (or never started): the next one may go. Once per place."""
        place.left.set()
        if self._last.get(place.scope) is place:
            del self._last[place.scope]
