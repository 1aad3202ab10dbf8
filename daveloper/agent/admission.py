"""Admission of chat turns on this instance: how many run and how many are starting, refused past the limits.

A turn's CPU goes mostly into its start (the call, the records, the request to the
model); a burst admitted past what the instance can start would make every admitted
turn wait seconds for its first token. So two bounds: turns *running* here
(``max_running``) and turns *starting* here (admitted, model not yet called,
``max_starting``). Past either, a new turn is refused at once with UNAVAILABLE,
reason ``TURNS_SATURATED`` and a retry delay, and the client retries, here or on
another instance. Counting is in process: no round trip.
"""

from __future__ import annotations

from daveloper.agent.running import RunningTurn
from daveloper.errors import Unavailable

__all__ = ["TurnAdmission"]


class TurnAdmission:
    """The counters and limits (0: no limit) of this instance's turns."""

    def __init__(self, *, max_running: int, max_starting: int, retry_seconds: float) -> None:
        self.max_running = max_running
        self.max_starting = max_starting
        self.retry_seconds = retry_seconds
        self.running = 0
        self.starting = 0

    def check(self) -> None:
        """Raise UNAVAILABLE (``TURNS_SATURATED``, RetryInfo) if a new turn would pass a limit."""
        if self.max_running and self.running >= self.max_running:
            raise Unavailable(f"this server is running its limit of {self.max_running} chat turns; retry shortly",
                              reason="TURNS_SATURATED", retry_after=self.retry_seconds,
                              metadata={"limit": str(self.max_running)})
        if self.max_starting and self.starting >= self.max_starting:
            raise Unavailable(f"this server is starting its limit of {self.max_starting} chat turns; retry shortly",
                              reason="TURNS_SATURATED", retry_after=self.retry_seconds,
                              metadata={"starting_limit": str(self.max_starting)})

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
