"""``daveloper.v1.SessionService``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from daveloper.audit import AuditLog
from daveloper.errors import InvalidArgument
from daveloper.rpc import Authenticator, Call, Servicer, public
from daveloper.sessions import SessionRecord, SessionStore
from generated.daveloper.v1 import (
    CreateSessionRequest,
    CreateSessionResponse,
    DeleteSessionRequest,
    DeleteSessionResponse,
    GetSessionRequest,
    GetSessionResponse,
    Quota,
    RateLimit,
    Session,
    SessionServiceBase,
)

__all__ = ["SessionService"]

_MAX_LABELS = 16
_MAX_LABEL_CHARS = 256


def _session_message(record: SessionRecord) -> Session:
    return Session(
        id=record.id, create_time=record.create_time(), expire_time=record.expire_time(), labels=record.labels,
        last_active_time=record.last_active_time(),
    )


class SessionService(Servicer):
    base = SessionServiceBase

    def __init__(
        self,
        *,
        store: SessionStore,
        auth: Authenticator | None = None,
        default_ttl: int,
        max_ttl: int,
        purgers: Sequence[Callable[[str], Awaitable[object]]] = (),
        quotas: Callable[[str], Awaitable[list[Quota]]] | None = None,
        rate_limits: Callable[[str], Awaitable[list[RateLimit]]] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        super().__init__(auth=auth or store)  # the Guard in the app: rate limits, audit
        self._store = store
        #: The session's quotas with their use, and its rate limits with what is left (for GetSession).
        self._quotas = quotas
        self._rate_limits = rate_limits
        self._audit = audit
        #: Each removes one kind of data a session owns (documents, points, ...).
        self._purgers = list(purgers)
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl

    @public
    async def CreateSession(
        self, request: CreateSessionRequest, call: Call[Any, Any]
    ) -> CreateSessionResponse:
        ttl = self._default_ttl
        if request.ttl is not None:
            ttl = int(request.ttl.total_seconds())
            if ttl < 60:
                raise InvalidArgument.field("ttl", "must be at least 60s")
            ttl = min(ttl, self._max_ttl)
        if len(request.labels) > _MAX_LABELS:
            raise InvalidArgument.field("labels", f"at most {_MAX_LABELS} labels")
        for key, value in request.labels.items():
            if not key or len(key) + len(value) > _MAX_LABEL_CHARS:
                raise InvalidArgument.field(
                    f"labels[{key!r}]", f"key must be non-empty and key+value at most {_MAX_LABEL_CHARS} chars"
                )
        record, token = await self._store.create(ttl, dict(request.labels))
        if self._audit is not None:
            await self._audit.record("session.created", session_id=record.id, ttl_seconds=ttl)
        return CreateSessionResponse(session=_session_message(record), token=token)

    async def GetSession(self, request: GetSessionRequest, call: Call[Any, Any]) -> GetSessionResponse:
        session = _session_message(await self._store.get(call.session_id))
        quotas = await self._quotas(call.session_id) if self._quotas is not None else []
        limits = await self._rate_limits(call.session_id) if self._rate_limits is not None else []
        return GetSessionResponse(session=session, quotas=quotas, rate_limits=limits)

    async def DeleteSession(self, request: DeleteSessionRequest, call: Call[Any, Any]) -> DeleteSessionResponse:
        # Data first, record last: if a purge fails the token still works and the call can be retried.
        for purge in self._purgers:
            await purge(call.session_id)
        await self._store.delete(call.session_id)
        if self._audit is not None:
            await self._audit.record("session.deleted")
        return DeleteSessionResponse()
