"""SessionService and the session authentication every other service relies on."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from redis.asyncio.connection import AbstractConnection

from daveloper.servicers.session import FIELD_MASK_KEY
from daveloper.sessions import TokenSigner
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DeleteSessionRequest,
    DocumentServiceStub,
    GetSessionRequest,
    ListDocumentsRequest,
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


class RedisTraffic:
    """Counts, in the real redis client's connections, the round trips and commands that name one session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, session_id: str) -> None:
        self.round_trips = 0
        self.commands: Counter[str] = Counter()
        marker = session_id.encode()
        send, pack = AbstractConnection.send_packed_command, AbstractConnection.pack_command

        async def counting_send(connection: AbstractConnection, command: Any, check_health: bool = True) -> None:
            chunks = [command] if isinstance(command, bytes | str) else list(command)
            if any(marker in (c.encode() if isinstance(c, str) else bytes(c)) for c in chunks):
                self.round_trips += 1
            await send(connection, chunks, check_health)

        def counting_pack(connection: AbstractConnection, *args: Any) -> Any:
            if any(session_id in (a.decode(errors="replace") if isinstance(a, bytes) else str(a)) for a in args):
                self.commands[str(args[0]).split()[0].lower()] += 1
            return pack(connection, *args)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
        monkeypatch.setattr(AbstractConnection, "pack_command", counting_pack)


#: Commands that only read; GetSession may send nothing else besides its admission charge.
_READS = frozenset({"hmget", "hgetall", "zcount", "get"})


async def test_get_session_costs_two_round_trips_one_charge_and_reads_only(
    channel: Channel, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = SessionServiceStub(channel)
    session_id = (await stub.get_session(GetSessionRequest(), metadata=bearer(token), timeout=5)).session.id
    traffic = RedisTraffic(monkeypatch, session_id)
    calls = 10
    for _ in range(calls):
        response = await stub.get_session(GetSessionRequest(), metadata=bearer(token), timeout=5)
    assert response.session.id == session_id
    assert response.quotas
    assert response.rate_limits
    # Admission (record read + rate-limit charge) in one round trip, the quotas and limits in another.
    assert traffic.round_trips == 2 * calls
    assert traffic.commands["evalsha"] == calls  # the admission charge: no script on the read itself
    reads = {name: count for name, count in traffic.commands.items() if name != "evalsha"}
    assert set(reads) <= _READS, reads
    assert sum(reads.values()) == 6 * calls  # the record, then 5 reads: usage, 2 lease sets, pages, buckets


async def test_admission_is_one_round_trip_per_call(
    channel: Channel, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = SessionServiceStub(channel)
    session_id = (await stub.get_session(GetSessionRequest(), metadata=bearer(token), timeout=5)).session.id
    traffic = RedisTraffic(monkeypatch, session_id)
    for _ in range(5):
        await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), metadata=bearer(token), timeout=5)
    admission = Counter({"hmget": 5, "evalsha": 5})
    assert {name: traffic.commands[name] for name in admission} == dict(admission)
    # ListDocuments reads the session's documents too; admission adds exactly one round trip to each call.
    listing = traffic.round_trips - 5
    assert 0 < listing <= 5 * 2


async def test_the_edge_handshake_asks_for_the_session_only(channel: Channel, token: str) -> None:
    stub = SessionServiceStub(channel)
    response = await stub.get_session(GetSessionRequest(), timeout=5,
                                      metadata={**bearer(token), FIELD_MASK_KEY: "session"})
    assert response.session.id
    assert not response.quotas
    assert not response.rate_limits
    response = await stub.get_session(GetSessionRequest(), timeout=5,
                                      metadata={**bearer(token), FIELD_MASK_KEY: "rateLimits"})
    assert response.rate_limits
    assert not response.quotas
    assert response.session is None
    with pytest.raises(GRPCError) as error:
        await stub.get_session(GetSessionRequest(), timeout=5, metadata={**bearer(token), FIELD_MASK_KEY: "nope"})
    assert error.value.status == Status.INVALID_ARGUMENT
