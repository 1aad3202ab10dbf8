"""``daveloper.v1.LogsService``: live logs of the caller's session (all of them for the admin), and the audit log."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from daveloper.audit import AuditLog
from daveloper.errors import InvalidArgument, PermissionDenied
from daveloper.keys import DEFAULT_KEYS, Keys
from daveloper.logstream import tail
from daveloper.rpc import Authenticator, Call, Servicer
from daveloper.servicers.heartbeat import Heartbeats, heartbeat
from generated.daveloper.v1 import (
    ListAuditEventsRequest,
    ListAuditEventsResponse,
    LogLevel,
    LogRecord,
    LogsServiceBase,
    TailRequest,
    TailResponse,
)

__all__ = ["LogsService"]

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


class LogsService(Servicer):
    base = LogsServiceBase

    def __init__(self, *, auth: Authenticator, audit: AuditLog, redis: aioredis.Redis,
                 heartbeat_seconds: float = 15.0, keys: Keys = DEFAULT_KEYS) -> None:
        super().__init__(auth=auth)
        self._audit = audit
        self._keys = keys
        self._redis = redis
        self._heartbeat_seconds = heartbeat_seconds

    async def Tail(self, request: TailRequest, call: Call[Any, Any]) -> None:
        principal = call.principal
        assert principal is not None
        everything = principal.admin and not principal.session_id  # the admin token not acting for a session
        min_level = request.min_level or LogLevel.INFO
        if len(request.logger_prefix) > 200 or len(request.job_id) > 100:
            raise InvalidArgument("filters are too long", violations=[("logger_prefix", "at most 200 characters"),
                                                                     ("job_id", "at most 100 characters")])

        def accept(record: LogRecord) -> bool:
            return bool(record.level >= min_level
                    and (everything or record.session_id == principal.session_id)
                    and (not request.job_id or record.job_id == request.job_id)
                    and record.logger.startswith(request.logger_prefix))

        async with Heartbeats(call, self._heartbeat_seconds, lambda: TailResponse(heartbeat=heartbeat())) as out:
            async for record in tail(self._redis, accept, keys=self._keys):
                await out.send(TailResponse(record=record))

    async def ListAuditEvents(self, request: ListAuditEventsRequest, call: Call[Any, Any]) -> ListAuditEventsResponse:
        if call.principal is None or not call.principal.admin:
            raise PermissionDenied("the audit log is readable with the admin token only", reason="ADMIN_ONLY")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        events, token = await self._audit.page(page_size=size, page_token=request.page_token, kind=request.kind,
                                               session_id=request.session_id)
        return ListAuditEventsResponse(events=events, next_page_token=token)
