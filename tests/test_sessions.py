"""Session tokens and records: key rotation, idle expiry, the expiry index, revocation, and no token in logs."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from daveloper.errors import Unauthenticated
from daveloper.jsonlog import configure_logging
from daveloper.sessions import SessionStore, TokenSigner
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DeleteSessionRequest,
    DocumentServiceStub,
    GetSessionRequest,
    ListDocumentsRequest,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from tests.edge.client import connect, messages, status
from tests.fuzz.raw_h2 import RawH2
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(30)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_token_signed_with_the_old_key_verifies_after_rotation_until_the_key_is_dropped() -> None:
    token = TokenSigner(b"key-A").issue("s1", expires_at=int(time.time()) + 60)
    rotated = TokenSigner(b"key-B", previous=[b"key-A"])
    assert rotated.verify(token) == "s1"
    with pytest.raises(Unauthenticated) as caught:  # new tokens are signed with B only
        TokenSigner(b"key-A").verify(rotated.issue("s2", int(time.time()) + 60))
    assert caught.value.reason == "TOKEN_INVALID"
    with pytest.raises(Unauthenticated) as caught:
        TokenSigner(b"key-B").verify(token)
    assert caught.value.reason == "TOKEN_INVALID"


async def test_rotation_keeps_sessions_alive_through_the_store(redis: aioredis.Redis) -> None:
    record, token = await SessionStore(redis, TokenSigner(b"key-A")).create(3600, {})
    rotated = SessionStore(redis, TokenSigner(b"key-B", previous=[b"key-A"]))
    assert (await rotated.authenticate(auth(token))).session_id == record.id
    with pytest.raises(Unauthenticated):
        await SessionStore(redis, TokenSigner(b"key-B")).authenticate(auth(token))


async def test_an_idle_session_ends_and_an_active_one_lives_on(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, TokenSigner(b"k"), idle_ttl_seconds=1)
    idle, idle_token = await store.create(3600, {})
    active, active_token = await store.create(3600, {})
    for _ in range(8):  # 2 s: twice the idle TTL, with a call every 0.25 s
        await store.authenticate(auth(active_token))
        await asyncio.sleep(0.25)
    assert (await store.authenticate(auth(active_token))).session_id == active.id
    with pytest.raises(Unauthenticated) as caught:
        await store.authenticate(auth(idle_token))
    assert caught.value.reason == "SESSION_NOT_FOUND"
    # Another instance (another store on the same Redis) refuses it too: the record itself is gone.
    assert not await redis.exists(store.record_key(idle.id))
    # The index still lists the idle session, with its deadline in the past, for the sweeper.
    score = await redis.zscore(store.index_key, idle.id)
    assert score is not None
    assert score <= time.time()


async def test_last_activity_is_written_at_most_once_per_interval(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, TokenSigner(b"k"), idle_ttl_seconds=3600)
    assert store.touch_interval == 60
    record, token = await store.create(7200, {})
    assert await redis.zscore(store.index_key, record.id) == pytest.approx(record.created_at + 3600)
    for _ in range(5):
        await store.authenticate(auth(token))
    assert (await store.get(record.id)).last_active == pytest.approx(record.created_at)
    # A minute later (moved back, not waited for) the next call records activity and moves the deadline.
    await redis.hset(store.record_key(record.id), "last_active", repr(record.created_at - 61))
    await store.authenticate(auth(token))
    now = time.time()
    assert (await store.get(record.id)).last_active == pytest.approx(now, abs=1)
    assert await redis.zscore(store.index_key, record.id) == pytest.approx(now + 3600, abs=1)
    assert await redis.pttl(store.record_key(record.id)) == pytest.approx(3600 * 1000, abs=2000)


async def test_the_deadline_never_passes_the_hard_expiry(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, TokenSigner(b"k"), idle_ttl_seconds=3600)
    record, token = await store.create(120, {})
    await redis.hset(store.record_key(record.id), "last_active", repr(record.created_at - 61))
    await store.authenticate(auth(token))
    assert await redis.zscore(store.index_key, record.id) == record.expires_at
    assert await redis.pttl(store.record_key(record.id)) <= 120 * 1000


async def test_delete_removes_the_record_and_the_index_entry(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, TokenSigner(b"k"))
    record, _ = await store.create(3600, {})
    assert await store.delete(record.id)
    assert await redis.zscore(store.index_key, record.id) is None
    assert not await redis.exists(store.record_key(record.id))


async def test_get_session_reports_last_activity(channel: Channel) -> None:
    stub = SessionServiceStub(channel)
    created = await stub.create_session(CreateSessionRequest(), timeout=5)
    assert created.session.last_active_time == created.session.create_time
    got = await stub.get_session(GetSessionRequest(), timeout=5, metadata=bearer(created.token))
    assert got.session.last_active_time is not None
    assert got.session.create_time <= got.session.last_active_time <= datetime.datetime.now(datetime.UTC)


@pytest.fixture
async def edge(app: App) -> AsyncIterator[Edge]:
    async with open_edge(app.settings, upstreams=[app.grpc_addr], health=app.health) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def second_app(settings: Settings, app: App, tmp_path: Path) -> AsyncIterator[App]:
    """Another instance on the same Redis (its own data directory: Qdrant local mode locks one)."""
    async with open_app(settings.replace(instance_id="second", data_dir=tmp_path / "second")) as running:
        yield running


async def test_a_revoked_token_is_refused_on_another_instance_within_one_second(
    channel: Channel, second_app: App
) -> None:
    other = Channel(second_app.grpc_addr.host, second_app.grpc_addr.port)
    try:
        created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
        await SessionServiceStub(other).get_session(GetSessionRequest(), timeout=5, metadata=bearer(created.token))
        await SessionServiceStub(channel).delete_session(DeleteSessionRequest(), timeout=5,
                                                         metadata=bearer(created.token))
        revoked = time.monotonic()
        with pytest.raises(GRPCError) as caught:
            await SessionServiceStub(other).get_session(GetSessionRequest(), timeout=5,
                                                        metadata=bearer(created.token))
        assert time.monotonic() - revoked < 1.0
        assert caught.value.status is Status.UNAUTHENTICATED
        assert reason(caught.value) == "SESSION_NOT_FOUND"
    finally:
        other.close()


async def test_tokens_never_appear_in_logs(app: App, channel: Channel, edge: Edge, http: aiohttp.ClientSession,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # The server's own logging set-up, at its most verbose, plus pytest's capture of every record.
    json_lines = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_levels = list(root.handlers), {name: logging.getLogger(name).level
                                                         for name in ("", *logging.root.manager.loggerDict)}
    configure_logging("DEBUG", "test", stream=json_lines)
    root.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    tokens: list[str] = []
    try:
        sessions = SessionServiceStub(channel)
        created = await sessions.create_session(CreateSessionRequest(labels={"app": "logs"}), timeout=5)
        tokens.append(created.token)
        await sessions.get_session(GetSessionRequest(), timeout=5, metadata=bearer(created.token))
        await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                          metadata=bearer(created.token))
        signer = TokenSigner(b"not-the-key")
        forged = signer.issue(created.session.id, int(time.time()) + 60)
        expired = signer.issue(created.session.id, 1)
        tokens += [forged, expired]
        for bad in (forged, expired, created.token + "x"):
            with pytest.raises(GRPCError):
                await sessions.get_session(GetSessionRequest(), timeout=5, metadata=bearer(bad))
        # The edge: a WebSocket handshake with the token, a call on it, and an HTTP call.
        client = await connect(http, edge, token=created.token)
        frames = await client.call(1, "/daveloper.v1.SessionService/GetSession", {})
        assert status(frames) == {"code": "ok"}
        assert messages(frames)[0]["session"]["id"] == created.session.id
        await client.ws.close()
        async with http.post(f"{edge.url}/daveloper.v1.SessionService/GetSession", json={},
                             headers={"Authorization": f"Bearer {created.token}"}) as response:
            assert response.status == 200
        bad_socket = await connect(http, edge, token=forged, hello=False)
        await bad_socket.send({"type": "hello", "token": forged})
        await bad_socket.recv()
        await bad_socket.ws.close()
        await sessions.delete_session(DeleteSessionRequest(), timeout=5, metadata=bearer(created.token))
        with pytest.raises(GRPCError):
            await sessions.get_session(GetSessionRequest(), timeout=5, metadata=bearer(created.token))
        await asyncio.sleep(0.1)  # let the edge and server log what they log after the calls
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        for name, level in saved_levels.items():
            logging.getLogger(name or None).setLevel(level)
    assert len(caplog.records) > 0, "nothing was logged: the test would prove nothing"
    secrets = [part for token in tokens for part in (token, token.rsplit(".", 1)[1])]
    leaking = {record.name for record in caplog.records
               if any(secret in record.getMessage() or secret in repr(vars(record)) for secret in secrets)}
    assert leaking == set(), f"loggers that logged a token: {sorted(leaking)}"
    assert not [secret for secret in secrets if secret in json_lines.getvalue()]


#: Bearer values no token of ours can be: non-ASCII (UTF-8 and bare high bytes), control characters, DEL.
HOSTILE_BEARERS = (b"Bearer t\xc3\xb6ken", b"Bearer \xff\xfe\xfd", b"Bearer abc\x01def", b"Bearer abc\x7f",
                   b"Bearer \x00", b"Bearer " + b"A" * 5000)


async def test_non_ascii_and_control_characters_in_a_token_are_unauthenticated(app: App, channel: Channel) -> None:
    created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
    raw = await RawH2.connect("127.0.0.1", app.grpc_addr.port)
    try:
        for value in (*HOSTILE_BEARERS, f"Bearer {created.token}\u00e9".encode("latin-1")):
            answer = await raw.call("/daveloper.v1.SessionService/GetSession", [(b"authorization", value)])
            assert answer.get("grpc-status") == str(Status.UNAUTHENTICATED.value), (value[:20], answer)
        # The connection survived them all, and still serves a genuine token.
        answer = await raw.call("/daveloper.v1.SessionService/GetSession",
                                [(b"authorization", f"Bearer {created.token}".encode())])
        assert answer.get("grpc-status") == "0"
    finally:
        await raw.aclose()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_the_bearer_scheme_is_case_insensitive(channel: Channel, scheme: str) -> None:
    created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
    got = await SessionServiceStub(channel).get_session(
        GetSessionRequest(), timeout=5, metadata={"authorization": f"{scheme} {created.token}"})
    assert got.session.id == created.session.id


async def test_the_admin_token_without_a_session_cannot_upload(settings: Settings, redis: aioredis.Redis) -> None:
    admin = "admin-token-for-upload-test"
    async with open_app(settings.replace(admin_token=admin)) as admin_app:
        channel = Channel(admin_app.grpc_addr.host, admin_app.grpc_addr.port)
        try:
            requests = [UploadRequest(header=UploadHeader(file_name="a.md", media_type="text/markdown")),
                        UploadRequest(chunk=b"# nobody's document\n")]
            with pytest.raises(GRPCError) as error:
                [r async for r in DocumentServiceStub(channel).upload(requests, timeout=10, metadata=bearer(admin))]
            assert error.value.status == Status.FAILED_PRECONDITION
            assert reason(error.value) == "SESSION_REQUIRED"
            listed = await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                                       metadata=bearer(admin))
            assert list(listed.documents) == []
        finally:
            channel.close()
