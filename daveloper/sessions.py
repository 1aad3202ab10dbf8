"""Anonymous sessions: signed bearer tokens, records in Redis with a TTL.

A token is ``v1.<session id>.<expiry unix seconds>.<signature>``, signed with
HMAC-SHA256. The signature and expiry are checked without I/O; the Redis record
is then required too, so a deleted session's token stops working at once.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from daveloper.errors import NotFound, Unauthenticated
from daveloper.rpc.call import Principal

__all__ = ["SessionRecord", "SessionStore", "TokenSigner", "load_secret_key"]

_TOKEN_VERSION = "v1"
_SECRET_KEY = "dv:secret:session-signing"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def load_secret_key(redis: aioredis.Redis, configured: str | None) -> bytes:
    """The signing key: the configured one, else one generated once and shared through Redis.

    Sharing it through Redis lets every instance that uses the same Redis verify
    every other instance's tokens without configuration.
    """
    if configured:
        return configured.encode()
    await redis.set(_SECRET_KEY, secrets.token_urlsafe(32), nx=True)
    value = await redis.get(_SECRET_KEY)
    assert value is not None
    return value.encode() if isinstance(value, str) else bytes(value)


class TokenSigner:
    """Issues and verifies session tokens."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, session_id: str, expires_at: int) -> str:
        body = f"{_TOKEN_VERSION}.{session_id}.{expires_at}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, *, now: float | None = None) -> str:
        """The session id of a genuine, unexpired token; otherwise ``Unauthenticated``."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _TOKEN_VERSION or not parts[2].isdigit():
            raise Unauthenticated("malformed session token", reason="TOKEN_MALFORMED")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body), parts[3]):
            raise Unauthenticated("invalid session token signature", reason="TOKEN_INVALID")
        if int(parts[2]) <= (time.time() if now is None else now):
            raise Unauthenticated("session token expired", reason="TOKEN_EXPIRED")
        return parts[1]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    created_at: float
    expires_at: int
    labels: dict[str, str] = field(default_factory=dict)

    def create_time(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.created_at, datetime.UTC)

    def expire_time(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.expires_at, datetime.UTC)


class SessionStore:
    """Session records in Redis, and the ``Authenticator`` every servicer uses."""

    def __init__(
        self, redis: aioredis.Redis, signer: TokenSigner, *, admin_token: str | None = None, prefix: str = "dv:"
    ) -> None:
        self._redis = redis
        self._signer = signer
        self._admin_token = admin_token
        self._prefix = prefix

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    async def create(self, ttl_seconds: int, labels: dict[str, str]) -> tuple[SessionRecord, str]:
        now = time.time()
        record = SessionRecord(
            id=secrets.token_urlsafe(16), created_at=now, expires_at=int(now) + ttl_seconds, labels=labels
        )
        payload = json.dumps({"created_at": record.created_at, "expires_at": record.expires_at,
                              "labels": record.labels})
        await self._redis.set(self._key(record.id), payload, ex=ttl_seconds)
        return record, self._signer.issue(record.id, record.expires_at)

    async def get(self, session_id: str) -> SessionRecord:
        raw = await self._redis.get(self._key(session_id))
        if raw is None:
            raise NotFound("session not found or expired", reason="SESSION_NOT_FOUND")
        data = json.loads(raw)
        return SessionRecord(session_id, data["created_at"], data["expires_at"], data["labels"])

    async def delete(self, session_id: str) -> bool:
        """Delete the record; data owned by the session is purged by its owners."""
        return bool(await self._redis.delete(self._key(session_id)))

    async def authenticate(self, metadata: Any) -> Principal:
        header = metadata.get("authorization") if metadata else None
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise Unauthenticated(
                "missing bearer token: send 'authorization: Bearer <token>' from CreateSession",
                reason="TOKEN_MISSING",
            )
        token = header.removeprefix("Bearer ").strip()
        if self._admin_token and hmac.compare_digest(token, self._admin_token):
            return Principal(session_id="", admin=True)
        session_id = self._signer.verify(token)
        if not await self._redis.exists(self._key(session_id)):
            raise Unauthenticated("session was deleted or has expired", reason="SESSION_NOT_FOUND")
        return Principal(session_id=session_id)
