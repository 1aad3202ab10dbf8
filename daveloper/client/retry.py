"""Resending a call the server refused for now, as its ``google.rpc.RetryInfo`` asks.

A refusal is retried only when all of these hold:

* its status is RESOURCE_EXHAUSTED or UNAVAILABLE and it carries ``RetryInfo``
  (the server says a retry may succeed, and when);
* the command knows the call is safe to send again (an upload is resent from
  its first byte; a chat message only with the same ``client_message_id`` and
  before any of its events arrived; a crawl only if refused at admission) —
  commands mark other failures final with :meth:`MayRetry.final`;
* the attempts and the time budget of the :class:`RetryPolicy` are not spent.

The wait is the server's delay plus random jitter, so that clients refused
together do not come back together; calls of one command that share a limit
share a :class:`Throttle`, which paces them after a refusal.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["MayRetry", "RetryPolicy", "Throttle", "retrying"]

T = TypeVar("T")

#: Longest spacing a :class:`Throttle` puts between paced calls.
MAX_SPACING_SECONDS = 5.0


class MayRetry(Exception):
    """A failure that may carry the server's "send it again in ``retry_after`` seconds"."""

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        #: Seconds the server asked to wait before sending the call again; ``None``: do not resend.
        self.retry_after = retry_after

    def final(self) -> MayRetry:
        """This failure, marked not to be resent (the call is not safe to send again)."""
        self.retry_after = None
        return self

@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times, and for how long, one call is resent."""

    #: Attempts in all, the first included.
    attempts: int = 5
    #: No retry starts past this many seconds after the first attempt began.
    budget_seconds: float = 30.0
    #: The wait is the server's delay times ``1 + jitter * U(0, 1)``.
    jitter: float = 0.5
    #: A floor on the wait, so a zero delay does not spin.
    min_delay_seconds: float = 0.05
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def wait(self, delay: float) -> float:
        """The jittered wait before the next attempt."""
        return max(delay, self.min_delay_seconds) * (1.0 + self.jitter * self.rng.random())


class Throttle:
    """Paces the calls of one command that share a server's limit (e.g. a session's upload rate).

    A refusal closes the gate for the delay the server asked; callers then pass
    one at a time, each the same delay after the previous one, which is the
    rate the server refills at. Callers that find the gate open pass at once, so
    pacing ends by itself once calls stop arriving faster than that. Without it,
    every refused caller would come back together and all but one be refused again.
    """

    def __init__(self) -> None:
        self._open_at = 0.0
        self._spacing = 0.0
        self._turns = asyncio.Lock()

    def hold(self, seconds: float) -> None:
        """The server asked to wait ``seconds`` before the next call.

        A refusal while calls are already being paced means the spacing is still
        too short for every caller in flight (the server's delay is the time to
        its next free slot, not the rate it refills at): the spacing doubles, up
        to :data:`MAX_SPACING_SECONDS`.
        """
        now = time.monotonic()
        pacing = now < self._open_at + self._spacing
        self._spacing = max(seconds, min(self._spacing * 2, MAX_SPACING_SECONDS)) if pacing else seconds
        self._open_at = max(self._open_at, now + seconds)

    async def admit(self) -> None:
        """Wait until this caller may send."""
        async with self._turns:
            if (wait := self._open_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
                self._open_at = time.monotonic() + self._spacing


async def retrying(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy,
                   on_retry: Callable[[MayRetry, float], None] | None = None, *,
                   throttle: Throttle | None = None) -> T:
    """``attempt()``, resent while it fails with a retryable :class:`MayRetry` and the policy allows.

    Calls that share a ``throttle`` are paced together after any of them is refused.
    """
    throttle = throttle or Throttle()
    started = time.monotonic()
    for number in range(1, policy.attempts + 1):
        await throttle.admit()
        try:
            return await attempt()
        except MayRetry as exc:
            if exc.retry_after is None or number == policy.attempts:
                raise
            wait = policy.wait(exc.retry_after)
            if time.monotonic() + wait - started > policy.budget_seconds:
                raise
            if on_retry is not None:
                on_retry(exc, wait)
            throttle.hold(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")
