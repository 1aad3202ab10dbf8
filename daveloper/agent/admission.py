"""Admission of chat turns on this instance: how many run and how many are starting, refused past the limits.

A turn's CPU goes mostly into its start (the call, the records, the request to the
model); a burst admitted past what the instance can start would make every admitted
turn wait seconds for its first token. So two bounds: turns *running* here
(``max_running``) and turns *starting* here (admitted, model not yet called,
``max_starting``). Past either, a new turn is refused at once with UNAVAILABLE,
reason ``TURNS_SATURATED`` and a retry delay, and the client retries, here or on
another instance. Counting is in process: no round trip.

A new ``Chat`` stream holds a starting slot (a :class:`Reservation`) from its arrival
until its first message is read (at most ``hold`` seconds): in a burst, the streams past
the limit are refused on arrival, before their authentication, instead of each being
authenticated first and refused when its message is read.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import TracebackType

from daveloper.agent.running import RunningTurn
from daveloper.errors import Unavailable

__all__ = ["Reservation", "TurnAdmission", "held_reservation"]

#: The reservation of the stream whose handler runs in this context (see :class:`Reservation`).
held_reservation: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "daveloper_turn_reservation", default=None)


class TurnAdmission:
    """The counters and limits (0: no limit) of this instance's turns."""

    def __init__(self, *, max_running: int, max_starting: int, retry_seconds: float) -> None:
        self.max_running = max_running
        self.max_starting = max_starting
        self.retry_seconds = retry_seconds
        self.running = 0
        self.starting = 0
        #: Starting slots held for new streams that have not sent their first message yet.
        self.reserved = 0

    def check(self) -> None:
        """Raise UNAVAILABLE (``TURNS_SATURATED``, RetryInfo) if a new turn would pass a limit."""
        if self.max_running and self.running >= self.max_running:
            raise Unavailable(f"this server is running its limit of {self.max_running} chat turns; retry shortly",
                              reason="TURNS_SATURATED", retry_after=self.retry_seconds,
                              metadata={"limit": str(self.max_running)})
        if self.max_starting and self.starting + self.reserved >= self.max_starting:
            raise Unavailable(f"this server is starting its limit of {self.max_starting} chat turns; retry shortly",
                              reason="TURNS_SATURATED", retry_after=self.retry_seconds,
                              metadata={"starting_limit": str(self.max_starting)})

    def reservation(self, hold: float = 1.0) -> Reservation:
        """A starting slot for a new stream (see :class:`Reservation`)."""
        return Reservation(self, hold)

    def admit(self) -> None:
        """Count a new turn as running and starting (after :meth:`check`)."""
        self.check()
        self.running += 1
        self.starting += 1

    def withdraw(self) -> None:
        """Uncount an admitted turn that did not start after all (it failed, or it already existed)."""
        self.running -= 1
        self.starting -= 1

    def started(self, turn: RunningTurn) -> None:
        """The turn's own start is done (its model is being called); once per turn."""
        if turn.starting:
            turn.starting = False
            self.starting -= 1

    def ended(self, turn: RunningTurn) -> None:
        """The turn no longer runs here (before its final event is written); once per turn."""
        self.started(turn)
        if turn.counted:
            turn.counted = False
            self.running -= 1


class Reservation:
    """A starting slot held for a new stream: taken on ``__enter__`` (refused as :meth:`TurnAdmission.check`
    refuses), given back by :meth:`release` (its first message was read), after ``hold`` seconds, or on exit."""

    __slots__ = ("_admission", "_held", "_hold", "_timer", "_token")

    def __init__(self, admission: TurnAdmission, hold: float) -> None:
        self._admission = admission
        self._hold = hold
        self._held = False
        self._timer: asyncio.TimerHandle | None = None
        self._token: contextvars.Token[Reservation | None] | None = None

    def __enter__(self) -> Reservation:
        admission = self._admission
        admission.check()
        if admission.max_starting:
            admission.reserved += 1
            self._held = True
            self._timer = asyncio.get_running_loop().call_later(self._hold, self.release)
        self._token = held_reservation.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if self._token is not None:
            held_reservation.reset(self._token)

    def release(self) -> None:
        """Give the slot back (once)."""
        if self._held:
            self._held = False
            self._admission.reserved -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
