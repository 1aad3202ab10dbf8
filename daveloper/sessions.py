"""Anonymous sessions: signed bearer tokens, records in Redis, idle expiry and an expiry index.

A token is ``v1.<session id>.<expiry unix seconds>.<signature>``, signed with
HMAC-SHA256. The signature and expiry are checked without I/O; the Redis record
is then required too, so a deleted session's token stops working at once, on
every instance that shares the Redis.

A session ends at the first of its hard expiry (the token's) and its *idle
deadline*: its last authenticated call plus ``idle_ttl_seconds``. Both are one
number, the record's Redis expiry, so an ended session's record is simply gone
and every instance refuses its token with ``SESSION_NOT_FOUND`` — the same
reason as a deleted session: a client cannot, and need not, tell them apart
(either way it must create a new session). Keys (``dv:`` prefix)::

    dv:session:{<id>}     hash created_at, expires_at, labels (JSON), last_active; expires at the deadline
    dv:sessions:expiry    sorted set of session ids scored by that deadline (the sweeper's work list)

The record is in the session's hash slot, the index is one global key, so no
script or transaction writes both (on a Redis Cluster they live on different
nodes): creation and deletion send both in one pipelined round trip, and an
index entry without a record is what the sweeper removes anyway. A touch
moves the index entry only after the record was found alive.

Last activity is recorded at most once per ``touch_interval`` (a minute, or a
quarter of the idle TTL if that is shorter), so a busy session costs one extra
round trip a minute, not one per call.
"""

from __future__ import annotations

import base64
import contextvars
import datetime
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from daveloper.errors import NotFound, Unauthenticated
from daveloper.infra.batching import CommandBatcher
from daveloper.infra.redis import reply_text
from daveloper.keys import DEFAULT_KEYS, Keys
from daveloper.rpc.call import Principal

__all__ = ["SessionRecord", "SessionStore", "TokenSigner", "load_secret_key", "well_formed_token"]

_TOKEN_VERSION = "v1"
#: Longest bearer token accepted (a session token is about 80 characters; the admin token must fit too).
MAX_TOKEN_CHARS = 4096
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def well_formed_token(token: str) -> bool:
    """Whether ``token`` could be a bearer token of ours: printable ASCII, at most ``MAX_TOKEN_CHARS``.

    A cheap check for every place a client-supplied token enters: anything else
    is refused before it reaches HMAC, HPACK or a log line.
    """
    return 0 < len(token) <= MAX_TOKEN_CHARS and _TOKEN_CHARS.fullmatch(token) is not None
#: Last activity is written at most this often per session.
_TOUCH_SECONDS = 60.0
#: What authentication reads of a record: the first two decide, the rest serve GetSession without a second read.
_RECORD_FIELDS = ["last_active", "expires_at", "created_at", "labels"]
#: The record the current call's authentication read: (session id, last active, expires_at, created_at, labels).
#: Each RPC runs in its own task, so this never outlives the call that set it.
_authenticated: contextvars.ContextVar[tuple[str, float, Any, Any, Any] | None] = contextvars.ContextVar(
    "daveloper_authenticated_record", default=None)

# KEYS: record. ARGV: now, deadline (unix seconds, float).
# Only a live record is touched: a session that ended meanwhile must not come back as a partial hash.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_active', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000))
return 1
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def load_secret_key(redis: aioredis.Redis, configured: str | None, *, keys: Keys = DEFAULT_KEYS) -> bytes:
    """The signing key: the configured one, else one generated once and shared through Redis.

    Sharing it through Redis lets every instance that uses the same Redis verify
    every other instance's tokens without configuration. It is deliberately not
    a file in ``data_dir``: each instance has its own data directory (Qdrant
    local mode locks it), so per-instance files would give each instance its own
    key and a token would work only on the instance that issued it — whereas the
    session records the tokens point to already live in the shared Redis, so the
    key lives and dies with them. Operators who rotate keys configure
    ``secret_key`` (and ``previous_secret_keys``) instead.
    """
    if configured:
        return configured.encode()
    name = keys.signing_secret
    await redis.set(name, secrets.token_urlsafe(32), nx=True)
    value = await redis.get(name)
    assert value is not None
    return value.encode() if isinstance(value, str) else bytes(value)


class TokenSigner:
    """Issues session tokens with the current key; verifies them with it or any previous key.

    Rotating the key (``secret_key`` = new, ``previous_secret_keys`` = old) logs
    nobody out: tokens signed with the old key keep working until the old key is
    dropped from the list (after ``session_max_ttl_seconds`` no such token is alive).
    """

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._key = key
        self._verifying = (key, *previous)

    @property
    def key_text(self) -> str:
        """The signing key as text: for the log redactor, which must know it to mask it."""
        return self._key.decode(errors="replace")

    @staticmethod
    def _sign(key: bytes, body: str) -> str:
        return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())

    def issue(self, session_id: str, expires_at: int) -> str:
        body = f"{_TOKEN_VERSION}.{session_id}.{expires_at}"
        return f"{body}.{self._sign(self._key, body)}"

    def verify(self, token: str, *, now: float | None = None) -> str:
        """The session id of a genuine, unexpired token; otherwise ``Unauthenticated``."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _TOKEN_VERSION or not parts[2].isdigit():
            raise Unauthenticated("malformed session token", reason="TOKEN_MALFORMED")
        body = ".".join(parts[:3])
        # Every key is tried (no early exit), so timing does not tell which one matched.
        genuine = [hmac.compare_digest(self._sign(key, body), parts[3]) for key in self._verifying]
        if not any(genuine):
            raise Unauthenticated("invalid session token signature", reason="TOKEN_INVALID")
        if int(parts[2]) <= (time.time() if now is None else now):
            raise Unauthenticated("session token expired", reason="TOKEN_EXPIRED")
        return parts[1]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored: its times are unix seconds."""

    id: str
    created_at: float
    expires_at: int
    labels: dict[str, str] = field(default_factory=dict)
    #: Last authenticated call, recorded to within the touch interval.
    last_active: float = 0.0

    def create_time(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.created_at, datetime.UTC)

    def expire_time(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.expires_at, datetime.UTC)

    def last_active_time(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.last_active or self.created_at, datetime.UTC)


class SessionStore:
    """Session records in Redis, and the ``Authenticator`` every servicer uses (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        signer: TokenSigner,
        *,
        admin_token: str | None = None,
        prefix: str = "dv:",
        idle_ttl_seconds: int = 24 * 3600,
        batch: CommandBatcher | None = None,
    ) -> None:
        self._redis = redis
        #: Lookups go out with other commands queued there (the event log's appends) when given.
        self._batch = batch
        self._signer = signer
        self._admin_token = admin_token
        self.keys = Keys(prefix)
        self.idle_ttl_seconds = idle_ttl_seconds
        # A tiny idle TTL (tests, demos) needs more frequent touches than once a minute, or
        # an active session would end between two of them.
        self.touch_interval = min(_TOUCH_SECONDS, idle_ttl_seconds / 4)
        self._touch = redis.register_script(_TOUCH)

    def _key(self, session_id: str) -> str:
        return self.keys.session(session_id)

    @property
    def index_key(self) -> str:
        """The sorted set of session ids by deadline (unix seconds)."""
        return self.keys.session_deadlines

    def record_key(self, session_id: str) -> str:
        """The Redis key of a session's record."""
        return self._key(session_id)

    def _deadline(self, expires_at: int, last_active: float) -> float:
        return min(float(expires_at), last_active + self.idle_ttl_seconds)

    async def create(self, ttl_seconds: int, labels: dict[str, str]) -> tuple[SessionRecord, str]:
        now = time.time()
        record = SessionRecord(id=secrets.token_urlsafe(16), created_at=now, expires_at=int(now) + ttl_seconds,
                               labels=labels, last_active=now)
        deadline = self._deadline(record.expires_at, now)
        key = self._key(record.id)
        # One round trip, not a transaction (two slots). The record cannot be used
        # before this returns, so nothing is written for the session until both are.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.index_key, {record.id: deadline})
            pipe.hset(key, mapping={"created_at": repr(now), "expires_at": record.expires_at,
                                    "labels": json.dumps(labels), "last_active": repr(now)})
            pipe.pexpireat(key, int(deadline * 1000))
            await pipe.execute()
        return record, self._signer.issue(record.id, record.expires_at)

    async def get(self, session_id: str) -> SessionRecord:
        raw = {reply_text(k): reply_text(v) for k, v in (await self._redis.hgetall(self._key(session_id))).items()}
        if "expires_at" not in raw:
            raise NotFound("session not found or expired", reason="SESSION_NOT_FOUND")
        return SessionRecord(session_id, float(raw["created_at"]), int(raw["expires_at"]),
                             json.loads(raw.get("labels", "{}")), float(raw.get("last_active", 0)))

    async def delete(self, session_id: str) -> bool:
        """Delete the record and its index entry; data owned by the session is purged by its owners."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._key(session_id))
            pipe.zrem(self.index_key, session_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    def check_token(self, metadata: Any) -> Principal:
        """The caller named by the request's bearer token, checked without I/O (signature, expiry, admin token).

        A session principal still needs its record: queue :meth:`queue_lookup`
        and pass the reply to :meth:`confirm` (or call :meth:`authenticate`,
        which does both).
        """
        header = metadata.get("authorization") if metadata else None
        # The scheme is case-insensitive (RFC 9110 §11.1), as at the edge.
        if not isinstance(header, str) or header[:7].lower() != "bearer ":
            raise Unauthenticated(
                "missing bearer token: send 'authorization: Bearer <token>' from CreateSession",
                reason="TOKEN_MISSING",
            )
        token = header[7:].strip(" \t")
        # Printable ASCII only, bounded: anything else is no token of ours (and would fail
        # hmac.compare_digest, or be echoed into a log, further on).
        if not well_formed_token(token):
            raise Unauthenticated("malformed bearer token: a token is printable ASCII, as CreateSession issued it",
                                  reason="TOKEN_MALFORMED")
        if self._admin_token and hmac.compare_digest(token, self._admin_token):
            return Principal(session_id="", admin=True)
        return Principal(session_id=self._signer.verify(token))

    def queue_lookup(self, pipe: Any, session_id: str) -> None:
        """Queue the one read :meth:`confirm` needs on a pipeline (or any client with ``hmget``)."""
        pipe.hmget(self._key(session_id), _RECORD_FIELDS)

    async def confirm(self, session_id: str, reply: Sequence[Any]) -> None:
        """Refuse a session whose record (the :meth:`queue_lookup` reply) is gone or past its deadline.

        Records the session's activity when due, and keeps the record for
        :meth:`authenticated_record` for the rest of the call.
        """
        if isinstance(reply, BaseException):
            raise reply
        last_active, expires_at, created_at, labels = reply
        now = time.time()
        # The record expires at its idle deadline; the explicit check covers Redis's expiry granularity.
        if (last_active is None or expires_at is None
                or now >= self._deadline(int(reply_text(expires_at)), float(reply_text(last_active)))):
            raise Unauthenticated("session was deleted or has expired", reason="SESSION_NOT_FOUND")
        active = float(reply_text(last_active))
        if now - active >= self.touch_interval:
            deadline = self._deadline(int(reply_text(expires_at)), now)
            if await self._touch(keys=[self._key(session_id)], args=[repr(now), repr(deadline)]):
                await self._redis.zadd(self.index_key, {session_id: deadline}, xx=True)
            active = now
        _authenticated.set((session_id, active, expires_at, created_at, labels))

    def authenticated_record(self, session_id: str) -> SessionRecord | None:
        """The record this call's authentication read, if it was ``session_id``'s: no second read for GetSession."""
        seen = _authenticated.get()
        if seen is None or seen[0] != session_id or seen[3] is None:
            return None
        _, active, expires_at, created_at, labels = seen
        return SessionRecord(session_id, float(reply_text(created_at)), int(reply_text(expires_at)),
                             json.loads(reply_text(labels)) if labels is not None else {}, active)

    def pipeline(self) -> Any:
        """A non-transactional pipeline on the sessions' Redis: a lookup plus other commands in one round trip."""
        return self._redis.pipeline(transaction=False)

    def lookup_pipeline(self) -> Any:
        """A pipeline for :meth:`queue_lookup` and commands queued with ``execute_command``: on the command
        batcher when the store has one (sent with whatever else is queued), else :meth:`pipeline`."""
        if self._batch is not None:
            return self._batch.pipeline()
        return self.pipeline()

    async def authenticate_session(self, session_id: str) -> None:
        """:meth:`confirm` a session whose token checked out, reading its record on its own."""
        await self.confirm(session_id, await self._redis.hmget(self._key(session_id), _RECORD_FIELDS))

    async def authenticate(self, metadata: Any) -> Principal:
        principal = self.check_token(metadata)
        if not principal.admin:
            await self.authenticate_session(principal.session_id)
        return principal
