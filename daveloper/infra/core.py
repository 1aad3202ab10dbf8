"""What every subsystem stands on: Redis, the vector engine, the event log, keys, audit, options, work.

:func:`open_core` opens them in order and closes them in reverse; the
subsystems (:mod:`daveloper.access`, :mod:`daveloper.documents.subsystem`,
:mod:`daveloper.scraper.subsystem`, :mod:`daveloper.agent.subsystem`) are built
on the :class:`Core` it yields, and the composition root
(:func:`daveloper.app.open_app`) joins them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from daveloper.audit import AuditLog
from daveloper.config import Settings
from daveloper.eventlog import EventLog
from daveloper.infra import HealthProbe
from daveloper.infra.qdrant import open_qdrant, qdrant_probe
from daveloper.infra.redis import open_redis, redis_probe
from daveloper.jobs import BackgroundJobs
from daveloper.keys import Keys
from daveloper.logredaction import Redactor, secrets_of
from daveloper.logstream import LogPublisher
from daveloper.metrics import Metrics
from daveloper.ownership import WorkLeases
from daveloper.redaction import OutboundRedactor
from daveloper.runtime import RuntimeConfig
from daveloper.sessions import TokenSigner, load_secret_key
from daveloper.vectors import VectorEngine

__all__ = ["Core", "open_core"]


@dataclass(frozen=True, slots=True)
class Core:
    """The shared resources of one instance (see the module docstring)."""

    settings: Settings
    metrics: Metrics
    #: Every Redis name, under ``settings.redis_prefix``.
    keys: Keys
    redis: aioredis.Redis
    qdrant: VectorEngine
    events: EventLog
    signer: TokenSigner
    #: What leaves for an external model or embedding endpoint (``DAVELOPER_REDACT``).
    redactor: OutboundRedactor
    audit: AuditLog
    runtime: RuntimeConfig
    #: Ingestions, crawls and turns that outlive the call that started them.
    jobs: BackgroundJobs
    #: This instance's claim on its running work, and the reaping of lost instances' work.
    work: WorkLeases

    @property
    def probes(self) -> list[HealthProbe]:
        """The dependencies every instance needs up to serve."""
        return [redis_probe(self.redis), qdrant_probe(self.qdrant)]


@contextlib.asynccontextmanager
async def open_core(settings: Settings, metrics: Metrics) -> AsyncIterator[Core]:
    """Open Redis and the vector engine, load the signing key and the runtime options; close in reverse."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys, prefix = Keys(settings.redis_prefix), settings.redis_prefix
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings, metrics=metrics))
        qdrant = await stack.enter_async_context(open_qdrant(settings, metrics=metrics))
        events = EventLog(redis, retention=settings.event_retention, ttl_seconds=settings.event_ttl_seconds,
                          prefix=prefix, metrics=metrics)
        stack.push_async_callback(events.aclose)
        secret = await load_secret_key(redis, settings.secret_key, keys=keys)
        signer = TokenSigner(secret, previous=[key.encode() for key in settings.previous_secret_keys])
        # Session ids leave as pseudonyms keyed by the signing secret.
        redactor = OutboundRedactor(settings.redact, key=secret,
                                    on_redacted=lambda kind, count: metrics.redactions.labels(kind).inc(count))
        runtime = RuntimeConfig(redis, settings, keys=keys)
        await runtime.refresh()
        # Log records go to Redis for LogsService/Tail, with every configured secret masked.
        publisher = LogPublisher(redis, instance=settings.instance_id, keys=keys,
                                 redactor=Redactor([*secrets_of(settings), signer.key_text]))
        publisher.start()
        stack.push_async_callback(publisher.aclose)
        jobs = BackgroundJobs()
        stack.push_async_callback(jobs.aclose)
        yield Core(
            settings, metrics, keys, redis, qdrant, events, signer, redactor,
            audit=AuditLog(redis, retention_seconds=settings.audit_retention_seconds, instance=settings.instance_id,
                           keys=keys),
            runtime=runtime, jobs=jobs,
            work=WorkLeases(redis, owner=settings.instance_id, ttl_seconds=settings.lease_seconds, prefix=prefix,
                            stall_seconds=settings.stall_seconds, metrics=metrics),
        )
