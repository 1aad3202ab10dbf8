"""Circuit breakers: a failing or slow upstream (the LLM endpoint, GitHub, a web site) fails fast and recovers.

A breaker is *closed* while calls succeed. After ``failures`` consecutive
failures it *opens*: calls are refused at once with ``UNAVAILABLE`` (reason
``CIRCUIT_OPEN``, ``RetryInfo`` = the time left) instead of waiting on timeouts
and retries. After ``reset_seconds`` it lets one probe call through
(*half-open*): success closes it, failure opens it again for another period.

A failure is an upstream that could not answer: ``Unavailable`` (connection
errors, timeouts, 5xx after the client's own retries) or ``TimeoutError``. An
upstream that answered "no" (400, 404, 429) is healthy, and so is its breaker.

Small enough to write here: the asyncio breakers on PyPI either count every
exception as a failure or need their own error types at every call site, and
none reports state to our metrics and health without an adapter of its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from enum import IntEnum

from daveloper.errors import Unavailable
from daveloper.metrics import METRICS

__all__ = ["BreakerMap", "BreakerProbe", "CircuitBreaker", "CircuitState", "is_failure"]

log = logging.getLogger("daveloper.breaker")


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the upstream could not answer (as opposed to answering with an error)."""
    if isinstance(exc, Unavailable):
        return exc.reason != "CIRCUIT_OPEN"
    return isinstance(exc, TimeoutError | ConnectionError)


class CircuitBreaker:
    """One upstream's breaker; see the module docstring."""

    def __init__(self, name: str, *, failures: int = 5, reset_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, report: bool = True) -> None:
        self.name = name
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._report = report
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = CircuitState.CLOSED
        if report:
            METRICS.circuit_state.labels(name).set(0)

    def _move(self, state: CircuitState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._report:
            METRICS.circuit_state.labels(self.name).set(int(state))
        if state is CircuitState.OPEN:
            log.warning("circuit %s open for %.0f s after %d failures", self.name, self.reset_seconds,
                        self._consecutive, extra={"circuit": self.name})
        elif state is CircuitState.CLOSED:
            log.info("circuit %s closed", self.name, extra={"circuit": self.name})

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
        if self._report:
            METRICS.circuit_rejections.labels(self.name).inc()
        raise Unavailable(f"{self.name} is failing; not calling it for {max(left, 0.0):.1f} s more",
                          reason="CIRCUIT_OPEN", retry_after=max(left, 0.1), metadata={"upstream": self.name})

    def success(self) -> None:
        self._consecutive = 0
        self._probing = False
        self._move(CircuitState.CLOSED)

    def failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self.state is CircuitState.HALF_OPEN or self._consecutive >= self.failures:
            self._opened_at = self._clock()
            self._move(CircuitState.OPEN)

    def abandon(self) -> None:
        """A call ended with no verdict on the upstream (cancelled): let another probe go."""
        self._probing = False

    def outcome(self, exc: BaseException | None) -> None:
        """Record how a call ended: ``None`` for success, else its exception (judged by :func:`is_failure`)."""
        if exc is not None and is_failure(exc):
            self.failure()
        elif exc is None or not isinstance(exc, Unavailable):
            self.success()
        else:
            self.abandon()  # our own refusal: no verdict on the upstream

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """``async with breaker.guard():`` check, run the block, record how it ended."""
        self.check()
        try:
            yield
        except Exception as exc:
            self.outcome(exc)
            raise
        except BaseException:
            self.abandon()  # cancelled: no verdict
            raise
        self.success()

    @property
    def open(self) -> bool:
        return self.state is CircuitState.OPEN and self._clock() < self._opened_at + self.reset_seconds


class BreakerProbe:
    """A health probe that fails while ``breaker`` is open (no request of its own)."""

    def __init__(self, name: str, breaker: CircuitBreaker) -> None:
        self.name = name
        self._breaker = breaker

    async def check(self) -> bool:
        return not self._breaker.open


class BreakerMap:
    """One breaker per key (e.g. per web host), the least recently used dropped beyond ``size``.

    Per-key breakers are not exported as metrics (unbounded label values); the
    map counts its open ones in ``daveloper_circuit_state{name=<name>}``.
    """

    def __init__(self, name: str, *, size: int = 1024, failures: int = 5, reset_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._size = size
        self._failures = failures
        self._reset = reset_seconds
        self._clock = clock
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        METRICS.circuits_open.labels(name).set_function(lambda: self.open_count)

    def __getitem__(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(f"{self.name}:{key}", failures=self._failures, reset_seconds=self._reset,
                                     clock=self._clock, report=False)
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
