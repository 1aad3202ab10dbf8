"""Admission of every call: who is calling, what they may do, and how often.

The :class:`Guard` is the ``auth`` every servicer is given. For each call it

* authenticates the bearer token through the :class:`~daveloper.sessions.SessionStore`
  (a failure is audited and answered UNAUTHENTICATED);
* lets the admin token act for one session (``x-daveloper-session`` metadata), for
  reading only: Get/List/Watch/Search/Query/Tail methods; each such call is audited;
* charges the call to token buckets in Redis, per session and per client address
  (loopback addresses excepted: they are this machine's own tools),
  by method class: uploads, scrapes, new sessions (per address only) and every
  other call; chat turns are charged per message by the agent
  (``call.charge("chat_turns")``). A refusal is RESOURCE_EXHAUSTED with
  ``RetryInfo`` (the edge turns it into HTTP 429 with ``Retry-After``) and is audited.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daveloper.audit import AuditLog
from daveloper.config import Settings, parse_rate
from daveloper.errors import FailedPrecondition, PermissionDenied, ResourceExhausted, Unauthenticated
from daveloper.metrics import METRICS, Metrics
from daveloper.ratelimit import Bucket, RateLimiter
from daveloper.rpc.call import Call, Principal
from daveloper.rpc.context import client_address_var
from daveloper.sessions import SessionStore
from generated.daveloper.v1 import RateLimit

__all__ = ["ACT_AS_KEY", "METHOD_CLASSES", "Guard", "RatePolicy"]

#: Metadata with which the admin token names the session it reads.
ACT_AS_KEY = "x-daveloper-session"
#: Method classes other than ``calls``; ``chat_turns`` is charged by the agent per message.
METHOD_CLASSES = {
    "/daveloper.v1.DocumentService/Upload": "uploads",
    "/daveloper.v1.ScraperService/StartScrape": "scrapes",
    "/daveloper.v1.ScraperService/Scrape": "scrapes",
    "/daveloper.v1.ScraperService/StartGitHubIngest": "scrapes",
    "/daveloper.v1.SessionService/CreateSession": "sessions",
}
#: Method classes that runtime switches turn off, and their switches.
FEATURES = {"chat_turns": "chat", "uploads": "uploads", "scrapes": "scraping"}
_READ_PREFIXES = ("Get", "List", "Watch", "Search", "Query", "Tail")
#: Limited per client address only (there is no session yet).
_ADDRESS_ONLY = frozenset({"sessions"})


def _is_loopback(address: str) -> bool:
    """This machine's own clients (local tools, tests) share no per-address budget; sessions still have one."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """Bucket sizes and periods by method class, and the client-address multiplier."""

    classes: dict[str, tuple[int, float]]
    address_factor: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RatePolicy:
        return cls(
            classes={name: parse_rate(getattr(settings, f"rate_{name}"), name=f"rate_{name}")
                     for name in ("chat_turns", "uploads", "scrapes", "calls", "sessions")},
            address_factor=settings.rate_address_factor,
        )

    def buckets(self, method_class: str, session_id: str, address: str) -> list[Bucket]:
        burst, period = self.classes[method_class]
        buckets = []
        if session_id and method_class not in _ADDRESS_ONLY:
            buckets.append(Bucket(f"dv:rl:s:{session_id}:{method_class}", burst, period))
        if address and not _is_loopback(address):
            factor = 1.0 if method_class in _ADDRESS_ONLY else self.address_factor
            buckets.append(Bucket(f"dv:rl:a:{address}:{method_class}", math.ceil(burst * factor), period))
        return buckets


class Guard:
    """Authenticates, scopes and rate-limits every call (see the module docstring)."""

    def __init__(self, store: SessionStore, limiter: RateLimiter, policy: RatePolicy, audit: AuditLog,
                 switches: Callable[[str], bool] = lambda feature: True, metrics: Metrics | None = None) -> None:
        #: Whether a feature (``chat``, ``uploads``, ``scraping``) is on (runtime options).
        self._switches = switches
        self._rate_limited = (metrics or METRICS).rate_limited
        self._store = store
        self._limiter = limiter
        self._policy = policy
        self._audit = audit

    async def authenticate(self, metadata: Any) -> Principal:
        try:
            principal = await self._store.authenticate(metadata)
        except Unauthenticated as exc:
            await self._audit.record("auth.failed", session_id="", reason=exc.reason)
            raise
        target = metadata.get(ACT_AS_KEY) if principal.admin and metadata else None
        if isinstance(target, str) and target:
            return Principal(session_id=target, admin=True)
        return principal

    async def admit(self, call: Call[Any, Any]) -> None:
        """Refuse the call if the caller may not make it now."""
        principal = call.principal
        if principal is not None and principal.admin:
            if principal.session_id:
                name = call.method.rsplit("/", 1)[-1]
                if not name.startswith(_READ_PREFIXES):
                    raise PermissionDenied(f"the admin token only reads a session's data; {name} writes",
                                           reason="ADMIN_READ_ONLY")
                await self._audit.record("admin.read", session_id=principal.session_id)
            return  # the operator is not rate-limited
        await self.charge(call, METHOD_CLASSES.get(call.method, "calls"))

    async def charge(self, call: Call[Any, Any], method_class: str) -> None:
        """Refuse a switched-off feature; take one token of ``method_class`` for the session and client address."""
        feature = FEATURES.get(method_class)
        if feature is not None and not self._switches(feature):
            raise FailedPrecondition(f"{feature} is switched off on this service for now", reason="FEATURE_DISABLED",
                                     metadata={"feature": feature})
        principal = call.principal
        if principal is not None and principal.admin:
            return
        session_id = principal.session_id if principal is not None else ""
        buckets = self._policy.buckets(method_class, session_id, client_address_var.get())
        if not buckets:
            return
        verdict = await self._limiter.take(buckets)
        if not verdict.allowed:
            self._rate_limited.labels(method_class).inc()
            burst, period = self._policy.classes[method_class]
            await self._audit.record("rate_limited", method_class=method_class,
                                     retry_after=f"{verdict.retry_after:.3f}")
            raise ResourceExhausted(
                f"rate limit exceeded: {burst} {method_class.replace('_', ' ')} per {period:g}s; "
                f"retry in {verdict.retry_after:.1f}s",
                reason="RATE_LIMITED", retry_after=max(verdict.retry_after, 0.001),
                metadata={"method_class": method_class, "limit": str(burst), "period_seconds": f"{period:g}"},
            )

    async def rate_limits(self, session_id: str) -> list[RateLimit]:
        """The session's buckets with what is available now (for GetSession)."""
        limits = []
        for method_class, (burst, period) in self._policy.classes.items():
            if method_class in _ADDRESS_ONLY:
                continue
            bucket = Bucket(f"dv:rl:s:{session_id}:{method_class}", burst, period)
            limits.append(RateLimit(method_class=method_class, burst=burst, per_minute=burst * 60 / period,
                                    available=await self._limiter.level(bucket)))
        return limits
