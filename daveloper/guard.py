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

import contextvars
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daveloper.audit import AuditLog
from daveloper.config import Settings, parse_rate
from daveloper.errors import FailedPrecondition, PermissionDenied, ResourceExhausted, Unauthenticated
from daveloper.keys import DEFAULT_KEYS, Keys
from daveloper.metrics import Metrics
from daveloper.ratelimit import Bucket, RateLimiter, Verdict
from daveloper.rpc.call import Call, Principal
from daveloper.rpc.context import client_address_var, method_var
from daveloper.runtime import RuntimeConfig
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


#: The method classes with a rate of their own (``rate_<class>`` settings and runtime options).
_RATE_CLASSES = ("chat_turns", "uploads", "scrapes", "calls", "sessions")


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """Bucket sizes and periods by method class, and the client-address multiplier."""

    classes: dict[str, tuple[int, float]]
    address_factor: float
    #: Names the buckets' hashes (the session's shares its hash slot with the session record).
    keys: Keys = DEFAULT_KEYS

    @classmethod
    def from_settings(cls, settings: Settings) -> RatePolicy:
        return cls(
            classes={name: parse_rate(getattr(settings, f"rate_{name}"), name=f"rate_{name}")
                     for name in _RATE_CLASSES},
            address_factor=settings.rate_address_factor,
        )

    @classmethod
    def following(cls, runtime: RuntimeConfig, settings: Settings, *, keys: Keys) -> RatePolicy:
        """The rates in force now (the settings', or their runtime overrides), kept current as the options change."""
        policy = cls(classes={name: parse_rate(str(runtime[f"rate_{name}"]), name=f"rate_{name}")
                              for name in _RATE_CLASSES},
                     address_factor=settings.rate_address_factor, keys=keys)
        runtime.on_change(policy.option_changed)
        return policy

    def option_changed(self, name: str, value: object) -> None:
        """A runtime option changed (:meth:`RuntimeConfig.on_change`): a ``rate_*`` one replaces its buckets."""
        if name.startswith("rate_"):
            self.classes[name.removeprefix("rate_")] = parse_rate(str(value), name=name)

    def _keep(self, address_only: bool) -> float:
        """How long an owner's hash of buckets must last after a charge: its slowest bucket's refill, plus a second."""
        return 1.0 + max(period for name, (_, period) in self.classes.items()
                         if address_only or name not in _ADDRESS_ONLY)

    def session_buckets(self, session_id: str) -> list[Bucket]:
        """Every bucket of a session (one Redis hash), in class order; not the address-only classes."""
        keep = self._keep(False)
        return [Bucket(self.keys.session_rate(session_id), name, burst, period, keep)
                for name, (burst, period) in self.classes.items() if name not in _ADDRESS_ONLY]

    def buckets(self, method_class: str, session_id: str, address: str) -> list[Bucket]:
        """The buckets one call of ``method_class`` is charged to: the session's, then the client address's."""
        burst, period = self.classes[method_class]
        buckets = []
        if session_id and method_class not in _ADDRESS_ONLY:
            buckets.append(Bucket(self.keys.session_rate(session_id), method_class, burst, period, self._keep(False)))
        if address and not _is_loopback(address):
            factor = 1.0 if method_class in _ADDRESS_ONLY else self.address_factor
            buckets.append(Bucket(self.keys.address_rate(address), method_class, math.ceil(burst * factor), period,
                                  self._keep(True)))
        return buckets


@dataclass(frozen=True, slots=True)
class _Prepaid:
    """A charge made together with the call's authentication (one Redis round trip for both)."""

    method: str
    method_class: str
    verdict: Verdict


#: Set by :meth:`Guard.authenticate`, consumed by :meth:`Guard.admit` of the same call.
_prepaid: contextvars.ContextVar[_Prepaid | None] = contextvars.ContextVar("daveloper_prepaid", default=None)


class Guard:
    """Authenticates, scopes and rate-limits every call (see the module docstring)."""

    def __init__(self, store: SessionStore, limiter: RateLimiter, policy: RatePolicy, audit: AuditLog,
                 switches: Callable[[str], bool] = lambda feature: True, metrics: Metrics | None = None) -> None:
        #: Whether a feature (``chat``, ``uploads``, ``scraping``) is on (runtime options).
        self._switches = switches
        self._rate_limited = (metrics if metrics is not None else Metrics()).rate_limited
        self._store = store
        self._limiter = limiter
        self._policy = policy
        self._audit = audit

    async def authenticate(self, metadata: Any) -> Principal:
        """The caller; inside an RPC its rate-limit charge rides in the same Redis round trip as the record read.

        The token's signature and expiry are checked first, without I/O, so only a
        genuine session's buckets can be charged; the charge is then settled by
        :meth:`admit` (a call whose session turns out gone is refused, and its
        charge is moot: that session can make no call).
        """
        try:
            principal = self._store.check_token(metadata)
            if not principal.admin:
                await self._confirm(principal.session_id)
        except Unauthenticated as exc:
            await self._audit.record("auth.failed", session_id="", reason=exc.reason)
            raise
        target = metadata.get(ACT_AS_KEY) if principal.admin and metadata else None
        if isinstance(target, str) and target:
            return Principal(session_id=target, admin=True)
        return principal

    async def _confirm(self, session_id: str) -> None:
        method = method_var.get()
        method_class = METHOD_CLASSES.get(method, "calls")
        feature = FEATURES.get(method_class)
        buckets = self._policy.buckets(method_class, session_id, client_address_var.get()) if method else []
        if not buckets or (feature is not None and not self._switches(feature)):
            # Outside an RPC, nothing to charge, or a switched-off feature (admit refuses it): the record alone.
            await self._store.authenticate_session(session_id)
            return
        async with self._store.lookup_pipeline() as pipe:
            self._store.queue_lookup(pipe, session_id)
            self._limiter.queue_take(pipe, buckets)
            record, *taken = await pipe.execute(raise_on_error=False)
        await self._store.confirm(session_id, record)
        verdict = await self._limiter.settle(taken, buckets)
        _prepaid.set(_Prepaid(method, method_class, verdict))

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
        method_class = METHOD_CLASSES.get(call.method, "calls")
        prepaid = _prepaid.get()
        if prepaid is not None and prepaid.method == call.method:
            _prepaid.set(None)
            await self._settle(prepaid.verdict, method_class)
            return
        await self.charge(call, method_class)

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
        # Queued on the store's lookup pipeline: with the command batcher, the take goes to Redis with whatever
        # else is waiting (a burst of turns costs a few pipelines, not a pooled connection each).
        async with self._store.lookup_pipeline() as pipe:
            self._limiter.queue_take(pipe, buckets)
            taken = await pipe.execute(raise_on_error=False)
        await self._settle(await self._limiter.settle(taken, buckets), method_class)

    async def _settle(self, verdict: Verdict, method_class: str) -> None:
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

    def queue_rate_limits(self, pipe: Any, session_id: str) -> None:
        """Queue the one read :meth:`rate_limits` needs (all of a session's buckets are one hash)."""
        pipe.hgetall(self._policy.keys.session_rate(session_id))

    def rate_limits(self, session_id: str, reply: Any) -> list[RateLimit]:
        """The session's buckets with what is available now (for GetSession), from the queued read's reply."""
        if isinstance(reply, BaseException):
            raise reply
        buckets = self._policy.session_buckets(session_id)
        return [RateLimit(method_class=bucket.field, burst=bucket.burst,
                          per_minute=bucket.burst * 60 / bucket.period_seconds, available=level)
                for bucket, level in zip(buckets, self._limiter.levels(reply, buckets), strict=True)]
