"""SessionService and the session authentication every other service relies on."""

from __future__ import annotations

import datetime

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.sessions import TokenSigner
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DeleteSessionRequest,
    GetSessionRequest,
    SessionServiceStub,
)
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(30)




async def test_create_then_get_returns_the_same_session(channel: Channel) -> None:
    stub = SessionServiceStub(channel)
    created = await stub.create_session(CreateSessionRequest(labels={"app": "demo"}), timeout=5)
    assert created.token.startswith("v1.")
    got = await stub.get_session(GetSessionRequest(), timeout=5, metadata=bearer(created.token))
    assert got.session.id == created.session.id
    assert got.session.labels == {"app": "demo"}
    lifetime = got.session.expire_time - got.session.create_time
    assert datetime.timedelta(hours=23) < lifetime <= datetime.timedelta(hours=24, seconds=1)


async def test_requested_ttl_is_capped_and_validated(channel: Channel) -> None:
    stub = SessionServiceStub(channel)
    long = await stub.create_session(CreateSessionRequest(ttl=datetime.timedelta(days=365)), timeout=5)
    assert long.session.expire_time - long.session.create_time <= datetime.timedelta(days=30, seconds=1)
    with pytest.raises(GRPCError) as caught:
        await stub.create_session(CreateSessionRequest(ttl=datetime.timedelta(seconds=5)), timeout=5)
    assert caught.value.status is Status.INVALID_ARGUMENT
    with pytest.raises(GRPCError) as caught:
        await stub.create_session(CreateSessionRequest(labels={"": "x"}), timeout=5)
    assert caught.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, "TOKEN_MISSING"),
        ({"authorization": "Basic abc"}, "TOKEN_MISSING"),
        (bearer("garbage"), "TOKEN_MALFORMED"),
        (bearer("v1.abc.99999999999.forged"), "TOKEN_INVALID"),
    ],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    channel: Channel, metadata: dict[str, str], expected: str
) -> None:
    with pytest.raises(GRPCError) as caught:
        await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5, metadata=metadata)
    assert caught.value.status is Status.UNAUTHENTICATED
    assert reason(caught.value) == expected


async def test_expired_token_is_refused(channel: Channel, redis: aioredis.Redis) -> None:
    from daveloper.sessions import load_secret_key

    signer = TokenSigner(await load_secret_key(redis, None))
    token = signer.issue("some-session", expires_at=1)
    with pytest.raises(GRPCError) as caught:
        await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5, metadata=bearer(token))
    assert reason(caught.value) == "TOKEN_EXPIRED"


async def test_deleted_session_token_stops_working(channel: Channel, token: str) -> None:
    stub = SessionServiceStub(channel)
    await stub.delete_session(DeleteSessionRequest(), timeout=5, metadata=bearer(token))
    with pytest.raises(GRPCError) as caught:
        await stub.get_session(GetSessionRequest(), timeout=5, metadata=bearer(token))
    assert caught.value.status is Status.UNAUTHENTICATED
    assert reason(caught.value) == "SESSION_NOT_FOUND"
