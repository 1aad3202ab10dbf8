"""Circuit breakers: a failing or slow upstream (the LLM endpoint, GitHub, a web site) fails fast and recovers.

A breaker is *closed* while calls succeed. It *opens* after ``failures``
consecutive failures, or (with ``failure_ratio``) when at least that share of
the calls in the last ``window_seconds`` failed (``min_calls`` calls at least).
Open, it refuses calls at once with ``UNAVAILABLE`` (reason ``CIRCUIT_OPEN``,
``RetryInfo`` = the time left, metadata ``upstream``) instead of waiting on
timeouts and retries. After ``reset_seconds`` it lets one probe call through
(*half-open*): success closes it, failure opens it again for another period.

A failure is an upstream that could not answer: ``Unavailable`` (connection
errors, timeouts, 5xx after the client's own retries) or ``TimeoutError``. An
upstream that answered "no" (400, 404, 429) is healthy, and so is its breaker;
a breaker can be given another judgement (``classify``). A call through
:meth:`CircuitBreaker.guard` that outlives ``timeout`` is a failure and raises
``UNAVAILABLE``, reason ``UPSTREAM_TIMEOUT``.

``state`` is ``"closed"``, ``"half_open"`` or ``"open"``; listeners hear each
change (with ``metrics``, a listener sets ``daveloper_circuit_state``), and the change
is logged on ``daveloper.breaker`` (WARNING on open, INFO otherwise).

Small enough to write here. Of the asyncio breakers on PyPI, aiobreaker has had
no release since 2021 and pybreaker's async support is Tornado's; purgatory is
kept up but counts a threshold of failures only (no ratio over a window), has
no per-call timeout, and raises its own open-circuit error, which every call
site would have to translate into ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from daveloper.errors import Unavailable
from daveloper.metrics import Metrics

__all__ = ["BreakerMap", "BreakerProbe", "CircuitBreaker", "CircuitState", "Listener", "is_failure"]

log = logging.getLogger("daveloper.breaker")

#: Slots of the failure-ratio window (the window slides by a tenth of its length).
_SLOTS = 10


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def level(self) -> int:
        """The ``daveloper_circuit_state`` value: 0 closed, 1 half-open, 2 open."""
        return _LEVELS[self]


_LEVELS = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

#: Called after a breaker changes state: ``listener(breaker, old, new)``.
Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the upstream could not answer (as opposed to answering with an error)."""
    if isinstance(exc, Unavailable):
        return exc.reason != "CIRCUIT_OPEN"
    return isinstance(exc, TimeoutError | ConnectionError)


@dataclass(slots=True)
class _Slot:
    index: int
    calls: int = 0
    failed: int = 0


class CircuitBreaker:
    """One upstream's breaker; see the module docstring."""

    def __init__(self, name: str, *, failures: int = 5, reset_seconds: float = 30.0,
                 failure_ratio: float | None = None, window_seconds: float = 60.0, min_calls: int = 10,
                 timeout: float | None = None, classify: Callable[[BaseException], bool] = is_failure,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
                 listeners: Sequence[Listener] = ()) -> None:
        self.name = name
        self.failures = failures
        self.reset_seconds = reset_seconds
        self.failure_ratio = failure_ratio
        self.window_seconds = window_seconds
        self.min_calls = min_calls
        #: Default limit of a call through :meth:`guard`.
        self.timeout = timeout
        self.classify = classify
        self._clock = clock
        #: Refused calls are counted in ``metrics`` (none given: not counted, as a map's per-host breakers).
        self._rejections = metrics.circuit_rejections.labels(name) if metrics is not None else None
        self._listeners = [*listeners]
        self._consecutive = 0
        self._window: deque[_Slot] = deque()
        self._opened_at = 0.0
        self._probing = False
        self.state = CircuitState.CLOSED
        if metrics is not None:  # the metrics listener: daveloper_circuit_state{name=<breaker>}
            level = metrics.circuit_state.labels(name)
            level.set(0)
            self._listeners.insert(0, lambda breaker, old, new: level.set(new.level))

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(breaker, old, new)`` after every change of state."""
        self._listeners.append(listener)

    def _move(self, state: CircuitState, why: str = "") -> None:
        old = self.state
        if state is old:
            return
        self.state = state
        if state is CircuitState.OPEN:
            log.warning("circuit %s open for %g s: %s", self.name, self.reset_seconds, why,
                        extra={"circuit": self.name, "state": str(state)})
        else:
            log.info("circuit %s %s", self.name, "closed" if state is CircuitState.CLOSED else "half-open",
                     extra={"circuit": self.name, "state": str(state)})
        for listener in self._listeners:
            try:
                listener(self, old, state)
            except Exception:  # an observer must not change the call's outcome
                log.exception("circuit %s listener failed", self.name)

    def check(self) -> None:
        """Raise ``Unavailable`` (``CIRCUIT_OPEN``) if a call may not go out now; else let it through."""
        if self.state is CircuitState.CLOSED:
            return
        left = self._opened_at + self.reset_seconds - self._clock()
        if self.state is CircuitState.OPEN and left <= 0:
            self._move(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True  # this call is the probe
            return
        if self._rejections is not None:
            self._rejections.inc()
        raise Unavailable(f"{self.name} is failing; not calling it for {max(left, 0.0):.1f} s more",
                          reason="CIRCUIT_OPEN", retry_after=max(left, 0.1), metadata={"upstream": self.name})

    def success(self) -> None:
        self._consecutive = 0
        self._probing = False
        if self.state is CircuitState.CLOSED:
            self._count(failed=False)
        else:
            self._window.clear()
            self._move(CircuitState.CLOSED)

    def failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self.state is not CircuitState.CLOSED:
            why = "the probe failed"
        elif self._count(failed=True):
            why = f"{self.failure_ratio:.0%} or more of the calls in {self.window_seconds:g} s failed"
        elif self._consecutive >= self.failures:
            why = f"{self._consecutive} failures in a row"
        else:
            return
        self._opened_at = self._clock()
        self._window.clear()
        self._move(CircuitState.OPEN, why)

    def _count(self, *, failed: bool) -> bool:
        """Add a call to the ratio window; whether the window's failures now open the breaker."""
        if self.failure_ratio is None:
            return False
        index = math.floor(self._clock() * _SLOTS / self.window_seconds)
        while self._window and self._window[0].index <= index - _SLOTS:
            self._window.popleft()
        if not self._window or self._window[-1].index != index:
            self._window.append(_Slot(index))
        self._window[-1].calls += 1
        self._window[-1].failed += failed
        calls = sum(slot.calls for slot in self._window)
        return calls >= self.min_calls and sum(slot.failed for slot in self._window) >= self.failure_ratio * calls

    def abandon(self) -> None:
        """A call ended with no verdict on the upstream (cancelled): let another probe go."""
        self._probing = False

    def outcome(self, exc: BaseException | None) -> None:
        """Record how a call ended: ``None`` for success, else its exception (judged by ``classify``)."""
        if exc is not None and self.classify(exc):
            self.failure()
        elif exc is None or not isinstance(exc, Unavailable):
            self.success()
        else:
            self.abandon()  # our own refusal: no verdict on the upstream

    @contextlib.asynccontextmanager
    async def guard(self, within: float | None = None) -> AsyncIterator[None]:
        """``async with breaker.guard():`` check, run the block (``within`` seconds, default ``timeout``),
        record how it ended."""
        self.check()
        limit = self.timeout if within is None else within
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                yield
        except TimeoutError as exc:
            if not deadline.expired():
                self.outcome(exc)  # the block's own timeout
                raise
            self.failure()
            raise Unavailable(f"{self.name} did not answer within {limit:g} s", reason="UPSTREAM_TIMEOUT",
                              retry_after=1.0, metadata={"upstream": self.name}) from exc
        except Exception as exc:
            self.outcome(exc)
            raise
        except BaseException:
            self.abandon()  # cancelled: no verdict
            raise
        self.success()

    @property
    def open(self) -> bool:
        """Whether calls are refused now (open, and its reset period not over)."""
        return self.state is CircuitState.OPEN and self._clock() < self._opened_at + self.reset_seconds


class BreakerProbe:
    """A health probe that fails while ``breaker`` is open.

    With ``request``, it also asks the upstream (a cheap call, through the breaker, within
    ``timeout``), at most every ``every`` seconds or when the breaker's state changed, and fails
    when that call fails.
    """

    def __init__(self, name: str, breaker: CircuitBreaker, *, request: Callable[[], Awaitable[Any]] | None = None,
                 timeout: float = 2.0, every: float = 30.0) -> None:
        self.name = name
        self._breaker = breaker
        self._request = request
        self._timeout = timeout
        self._every = every
        self._last: tuple[float, CircuitState, bool] | None = None

    async def check(self) -> bool:
        breaker = self._breaker
        if breaker.open or self._request is None:
            return not breaker.open
        now = time.monotonic()
        if self._last is not None and now < self._last[0] + self._every and self._last[1] is breaker.state:
            return self._last[2]
        try:
            async with breaker.guard(self._timeout):
                await self._request()
            ok = True
        except Exception as exc:  # a probe reports failure, whatever it is; CancelledError passes
            log.debug("%s probe failed: %r", self.name, exc)
            ok = False
        self._last = (now, breaker.state, ok)
        return ok


class BreakerMap:
    """One breaker per key (e.g. per web host), the least recently used dropped beyond ``size``.

    Per-key breakers are not exported as metrics (unbounded label values); the
    map counts its open ones in ``daveloper_circuits_open{name=<name>}`` of ``metrics`` (if given).
    """

    def __init__(self, name: str, *, size: int = 1024, failures: int = 5, reset_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None) -> None:
        self.name = name
        self._size = size
        self._failures = failures
        self._reset = reset_seconds
        self._clock = clock
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        if metrics is not None:
            metrics.circuits_open.labels(name).set_function(lambda: self.open_count)

    def __getitem__(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(f"{self.name}:{key}", failures=self._failures, reset_seconds=self._reset,
                                     clock=self._clock)
            self._breakers[key] = breaker
            if len(self._breakers) > self._size:
                self._breakers.popitem(last=False)
        else:
            self._breakers.move_to_end(key)
        return breaker

    def __len__(self) -> int:
        return len(self._breakers)

    @property
    def open_count(self) -> int:
        return sum(b.open for b in self._breakers.values())
