"""grpc.health.v1 backed by real dependency state.

A monitor polls each dependency probe (Redis, Qdrant) and sets one
``ServiceStatus`` per dependency; each service's health is the conjunction of
the dependencies it needs, so ``Check`` answers from current state and
``Watch`` pushes every change. Draining turns everything NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health

from daveloper.infra import HealthProbe
from daveloper.metrics import Metrics

__all__ = ["HealthMonitor"]

log = logging.getLogger("daveloper.health")


class HealthMonitor:
    """Polls probes and drives the statuses grpclib's ``Health`` service reports."""

    def __init__(self, probes: Sequence[HealthProbe], *, interval: float = 2.0,
                 advisory: Sequence[HealthProbe] = (), metrics: Metrics | None = None) -> None:
        self._up = (metrics if metrics is not None else Metrics()).dependency_up
        self._probes = [*probes, *advisory]
        #: Probes that only the services needing them follow, not overall health and /readyz
        #: (the LLM endpoint: without it sessions, documents and search still work).
        self.advisory = {probe.name for probe in advisory}
        self._interval = interval
        self._statuses = {probe.name: ServiceStatus() for probe in self._probes}
        self._serving = ServiceStatus()  # False once draining
        self._serving.set(True)

    def add(self, probe: HealthProbe) -> None:
        """Watch one more dependency (it counts towards overall health only)."""
        self._probes.append(probe)
        self._statuses[probe.name] = ServiceStatus()

    def service(self, needs: Mapping[Any, Iterable[str]]) -> Health:
        """The Health servicer: ``needs`` maps each servable to the probe names it depends on."""
        checks: dict[Any, list[ServiceStatus]] = {
            servable: [self._serving, *(self._statuses[name] for name in names)]
            for servable, names in needs.items()
        }
        checks[OVERALL] = [self._serving, *(s for n, s in self._statuses.items() if n not in self.advisory)]
        return Health(checks)

    async def check_once(self) -> dict[str, bool]:
        results = await asyncio.gather(*(probe.check() for probe in self._probes))
        for probe, ok in zip(self._probes, results, strict=True):
            status = self._statuses[probe.name]
            if status.__status__() is not ok:
                log.log(logging.INFO if ok else logging.WARNING, "dependency %s",
                        "up" if ok else "down", extra={"dependency": probe.name})
            status.set(ok)
            self._up.labels(probe.name).set(1 if ok else 0)
        return dict(zip((p.name for p in self._probes), results, strict=True))

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    def ready(self, results: Mapping[str, bool]) -> bool:
        """Whether probe ``results`` make the instance ready (advisory ones aside)."""
        return all(ok for name, ok in results.items() if name not in self.advisory)

    def set_draining(self) -> None:
        self._serving.set(False)
