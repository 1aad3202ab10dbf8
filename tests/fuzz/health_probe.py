"""A health prober for hostile runs: how long ``grpc.health.v1.Health/Check`` takes while they go on.

The server shares one event loop with everything it does, so a request that
stalls the loop shows up here as a slow health answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from daveloper.config import Address

__all__ = ["HealthLatency", "probing"]


@dataclass
class HealthLatency:
    """Health answer times seen while probing, in seconds."""

    samples: list[float] = field(default_factory=list)
    failures: int = 0
    #: The longest the event loop was late waking a 5 ms timer (a stall anywhere in the process).
    loop_lag: float = 0.0

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)

    def summary(self) -> str:
        ordered = sorted(self.samples)
        median = ordered[len(ordered) // 2] if ordered else 0.0
        return (f"health: {len(ordered)} checks, median {median * 1000:.1f} ms, "
                f"worst {self.worst * 1000:.1f} ms, {self.failures} failed; "
                f"loop late by at most {self.loop_lag * 1000:.1f} ms")


@contextlib.asynccontextmanager
async def probing(addr: Address, *, every: float = 0.02) -> AsyncIterator[HealthLatency]:
    """Check health every ``every`` seconds (on its own connection) until the block ends."""
    seen = HealthLatency()
    channel = Channel(addr.host, addr.port)
    health = HealthStub(channel)

    async def probe() -> None:
        # Timed from when the check was due, not from when the loop got round to it: a stalled
        # loop delays the prober's own wake-up as much as the server's answer.
        due = time.perf_counter()
        while True:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                await health.Check(HealthCheckRequest(), timeout=5)
            except Exception:  # a failed check is a finding, not a reason to stop probing
                seen.failures += 1
            answered = time.perf_counter()
            seen.samples.append(answered - due)
            due = answered + every

    async def lag() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            seen.loop_lag = max(seen.loop_lag, time.perf_counter() - started - 0.005)

    tasks = [asyncio.create_task(probe(), name="health-prober"), asyncio.create_task(lag(), name="loop-lag")]
    try:
        await asyncio.sleep(0.05)  # connected and answering before the run starts
        yield seen
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        channel.close()
