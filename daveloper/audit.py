"""The audit log: security-relevant events, kept for a configurable time, readable by the admin token.

Events go to one Redis stream (``dv:audit``), trimmed by age on every append,
so every instance writes to and reads from the same log. Each carries the
request id and the client address of the call it happened in, from the RPC
context. Tokens and secrets are never recorded.

Kinds: ``session.created``, ``session.deleted``, ``session.swept``,
``auth.failed``, ``rate_limited``, ``admin.read``, ``fetch.refused``,
``document.deleted``.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from daveloper.errors import InvalidArgument
from daveloper.keys import DEFAULT_KEYS, Keys
from daveloper.rpc.context import client_address_var, method_var, request_id_var, session_id_var
from generated.daveloper.v1 import AuditEvent

__all__ = ["AuditLog"]

log = logging.getLogger("daveloper.audit")

#: Events read (newest first) per page before filters are applied, at most.
_SCAN_LIMIT = 2000


class AuditLog:
    """Appends and reads audit events."""

    def __init__(self, redis: aioredis.Redis, *, retention_seconds: int, instance: str,
                 keys: Keys = DEFAULT_KEYS) -> None:
        self._redis = redis
        self._stream = keys.audit
        self._retention_ms = retention_seconds * 1000
        self._instance = instance

    async def record(self, kind: str, *, session_id: str | None = None, **fields: object) -> None:
        """Append an event; never raises (an audit failure must not fail the call it describes)."""
        entry: dict[bytes | bytearray | memoryview[int] | str | int | float,
                    bytes | bytearray | memoryview[int] | str | int | float] = {
            "kind": kind,
            "session_id": session_id if session_id is not None else session_id_var.get(),
            "request_id": request_id_var.get(),
            "client_address": client_address_var.get(),
            "method": method_var.get(),
            "instance": self._instance,
            "fields": json.dumps({k: str(v) for k, v in fields.items()}),
        }
        oldest = int(time.time() * 1000) - self._retention_ms
        try:
            await self._redis.xadd(self._stream, entry, minid=oldest, approximate=True)
        except aioredis.RedisError as exc:
            log.warning("audit event not recorded: %s", exc, extra={"kind": kind})
        log.info("audit %s", kind, extra={"audit_kind": kind, "client_address": entry["client_address"]})

    async def page(self, *, page_size: int, page_token: str, kind: str = "",
                   session_id: str = "") -> tuple[list[AuditEvent], str]:
        """Newest first; the token is the stream id to continue before."""
        if page_token and not _is_stream_id(page_token):
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        end = f"({page_token}" if page_token else "+"
        events: list[AuditEvent] = []
        last = ""
        scanned = 0
        while len(events) < page_size and scanned < _SCAN_LIMIT:
            batch = await self._redis.xrevrange(self._stream, max=end, min="-", count=min(200, _SCAN_LIMIT - scanned))
            if not batch:
                last = ""
                break
            for raw_id, raw in batch:
                scanned += 1
                last = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                event = _event(last, raw or {})
                if (not kind or event.kind == kind) and (not session_id or event.session_id == session_id):
                    events.append(event)
                    if len(events) == page_size:
                        break
            end = f"({last}"
        return events, last if len(events) == page_size or scanned >= _SCAN_LIMIT else ""


def _is_stream_id(text: str) -> bool:
    ms, sep, seq = text.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


def _event(stream_id: str, raw: Mapping[bytes | str, bytes | str]) -> AuditEvent:
    data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}
    millis = int(stream_id.partition("-")[0])
    return AuditEvent(
        time=datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC),
        kind=data.get("kind", ""), session_id=data.get("session_id", ""), request_id=data.get("request_id", ""),
        client_address=data.get("client_address", ""), method=data.get("method", ""),
        instance=data.get("instance", ""), fields=json.loads(data.get("fields", "{}")),
    )
