"""``daveloper.v1.LogsService``: the audit log, for the operator's admin token."""

from __future__ import annotations

from typing import Any

from daveloper.audit import AuditLog
from daveloper.errors import PermissionDenied
from daveloper.rpc import Authenticator, Call, Servicer
from generated.daveloper.v1 import ListAuditEventsRequest, ListAuditEventsResponse, LogsServiceBase

__all__ = ["LogsService"]

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


class LogsService(Servicer):
    base = LogsServiceBase

    def __init__(self, *, auth: Authenticator, audit: AuditLog) -> None:
        super().__init__(auth=auth)
        self._audit = audit

    async def ListAuditEvents(self, request: ListAuditEventsRequest, call: Call[Any, Any]) -> ListAuditEventsResponse:
        if call.principal is None or not call.principal.admin:
            raise PermissionDenied("the audit log is readable with the admin token only", reason="ADMIN_ONLY")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        events, token = await self._audit.page(page_size=size, page_token=request.page_token, kind=request.kind,
                                               session_id=request.session_id)
        return ListAuditEventsResponse(events=events, next_page_token=token)
