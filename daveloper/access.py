"""Who may call, and what became of a session: the session store, the guard, and the services that end sessions.

:func:`open_access` builds the session store and the :class:`~daveloper.guard.Guard`
(authentication, rate limits that follow the runtime options, feature switches)
every servicer checks calls with. Once the subsystems that keep data per session
exist, :meth:`Access.services` joins them: ``SessionService`` and the
:class:`~daveloper.sweeper.Sweeper` purge a session through each of them in the
order given, then every key named by the session (rate buckets, leases, caches,
counters) last; ``GetSession`` reports the quotas each of them reads, in one round
trip. ``LogsService`` (the audit log and live logs) is served here too: what it
shows is decided by the caller's session or the admin token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from daveloper.guard import Guard, RatePolicy
from daveloper.infra.core import Core
from daveloper.ratelimit import RateLimiter
from daveloper.servicers.logs import LogsService
from daveloper.servicers.session import SessionService
from daveloper.sessions import SessionStore
from daveloper.sweeper import Sweeper, purge_named_keys
from daveloper.usage import QuotaReading, SessionUsage

__all__ = ["Access", "SessionData", "open_access"]

#: A servicer, and the health probes (``redis``, ``qdrant``, ``llm``) its health status follows.
Services = dict[Any, tuple[str, ...]]


class SessionData(Protocol):
    """A subsystem that keeps data per session."""

    async def purge_session(self, session_id: str) -> None:
        """Delete everything of the session this subsystem holds (its records last, they name the rest)."""

    @property
    def quotas(self) -> Sequence[QuotaReading]:
        """The session's quotas this subsystem counts, for ``GetSession``."""


@dataclass(frozen=True, slots=True)
class Access:
    """The session store and the guard; :meth:`services` adds the servicers that end sessions."""

    core: Core
    sessions: SessionStore
    guard: Guard

    def services(self, holders: Sequence[SessionData]) -> tuple[Services, Sweeper]:
        """``SessionService`` and ``LogsService``, and the sweeper, purging through ``holders`` in order."""
        core, settings = self.core, self.core.settings

        async def purge_session_keys(session_id: str) -> None:
            await purge_named_keys(core.redis, [session_id], prefix=settings.redis_prefix)

        purgers = [*(holder.purge_session for holder in holders), purge_session_keys]
        usage = SessionUsage(self.sessions.pipeline, [q for holder in holders for q in holder.quotas],
                             self.guard.queue_rate_limits, self.guard.rate_limits)
        sessions = SessionService(store=self.sessions, auth=self.guard, default_ttl=settings.session_ttl_seconds,
                                  max_ttl=settings.session_max_ttl_seconds, purgers=purgers, audit=core.audit,
                                  usage=usage)
        logs = LogsService(auth=self.guard, audit=core.audit, redis=core.redis, keys=core.keys,
                           heartbeat_seconds=settings.heartbeat_seconds)
        sweeper = Sweeper(core.redis, self.sessions, purgers, settings.sweep_interval_seconds, audit=core.audit,
                          prefix=settings.redis_prefix)
        return {sessions: ("redis",), logs: ("redis",)}, sweeper


def open_access(core: Core) -> Access:
    """The session store and the guard on ``core`` (they hold no resources of their own)."""
    settings = core.settings
    sessions = SessionStore(core.redis, core.signer, admin_token=settings.admin_token, prefix=settings.redis_prefix,
                            idle_ttl_seconds=settings.session_idle_ttl_seconds, batch=core.events.batch)
    policy = RatePolicy.following(core.runtime, settings, keys=core.keys)
    guard = Guard(sessions, RateLimiter(core.redis), policy, core.audit, switches=core.runtime.enabled,
                  metrics=core.metrics)
    return Access(core, sessions, guard)
