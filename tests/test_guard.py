"""Abuse control through real gRPC and the real edge: rate limits, quotas, admin scope, the audit log."""

from __future__ import annotations

import contextlib
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
from daveloper.leases import LeaseSet
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatRequest,
    CreateSessionRequest,
    DeleteDocumentRequest,
    DocumentServiceStub,
    GetDocumentRequest,
    GetSessionRequest,
    ListAuditEventsRequest,
    ListDocumentsRequest,
    LogsServiceStub,
    SendMessage,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from tests.grpc_helpers import bearer, reason, retry_seconds

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-token-for-tests"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(rate_calls="8/h", rate_sessions="3/h", rate_chat_turns="2/h", rate_uploads="100/h",
                            rate_address_factor=1.5, admin_token=ADMIN, quota_documents=2,
                            quota_stored_bytes=10_000, trusted_proxies=("127.0.0.1",))


def as_client(address: str, token: str | None = None) -> dict[str, str]:
    """Metadata of a call the edge makes for a client at ``address`` (trusted from loopback)."""
    return {"x-daveloper-client-address": address, **(bearer(token) if token else {})}


async def new_session(channel: Channel, address: str = "198.51.100.1") -> str:
    return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5,
                                                             metadata=as_client(address))).token


async def calls_allowed(channel: Channel, metadata: dict[str, str], attempts: int) -> tuple[int, GRPCError | None]:
    allowed, refusal = 0, None
    for _ in range(attempts):
        try:
            await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5, metadata=metadata)
            allowed += 1
        except GRPCError as error:
            refusal = error
            assert refusal.status == Status.RESOURCE_EXHAUSTED, refusal
    return allowed, refusal


@contextlib.asynccontextmanager
async def second_instance(settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    """Another Daveloper on the same Redis (its own Qdrant directory: local mode locks it)."""
    async with open_app(settings.replace(data_dir=tmp_path / "other", instance_id="other")) as other:
        yield other


async def test_a_session_bucket_holds_across_two_instances(
    app: App, channel: Channel, settings: Settings, tmp_path: Path
) -> None:
    token = await new_session(channel)
    async with second_instance(settings, tmp_path) as other:
        other_channel = Channel(other.grpc_addr.host, other.grpc_addr.port)
        try:
            first, _ = await calls_allowed(channel, bearer(token), 5)
            second, refusal = await calls_allowed(other_channel, bearer(token), 5)
        finally:
            other_channel.close()
    assert first + second == 8  # the bucket, shared through Redis, not 8 per instance
    assert refusal is not None
    assert reason(refusal) == "RATE_LIMITED"
    delay = retry_seconds(refusal)
    assert delay is not None
    assert 0 < delay <= 3600 / 8


async def test_a_client_address_is_limited_across_its_sessions(channel: Channel) -> None:
    a = await new_session(channel, "203.0.113.7")
    b = await new_session(channel, "203.0.113.7")
    # Address bucket: 8 x 1.5 = 12 calls, shared by every session from that address.
    used_a, _ = await calls_allowed(channel, as_client("203.0.113.7", a), 8)
    used_b, refusal = await calls_allowed(channel, as_client("203.0.113.7", b), 8)
    assert (used_a, used_b) == (8, 4)
    assert refusal is not None
    # The same session from another address still has its own budget left? No: its session bucket is
    # spent for b only partly (4 of 8), so b may go on from elsewhere.
    more_b, _ = await calls_allowed(channel, as_client("192.0.2.50", b), 4)
    assert more_b == 4


async def test_new_sessions_are_limited_per_address(channel: Channel) -> None:
    for _ in range(3):
        await new_session(channel, "198.51.100.9")
    with pytest.raises(GRPCError) as error:
        await new_session(channel, "198.51.100.9")
    assert error.value.status == Status.RESOURCE_EXHAUSTED
    await new_session(channel, "198.51.100.10")  # another address is unaffected


async def test_chat_turns_are_charged_per_message(channel: Channel) -> None:
    token = await new_session(channel)
    sends = [ChatRequest(send=SendMessage(conversation_id="c", text=f"question {i}")) for i in range(3)]
    with pytest.raises(GRPCError) as error:
        [r async for r in AgentServiceStub(channel).chat(sends, timeout=30, metadata=bearer(token))]
    assert error.value.status == Status.RESOURCE_EXHAUSTED
    assert "chat turns" in error.value.message


async def test_concurrent_turns_are_bounded_per_session(app: App, channel: Channel, redis: aioredis.Redis) -> None:
    token = await new_session(channel)
    session_id = (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                                metadata=bearer(token))).session.id
    leases = LeaseSet(redis, "turns", ttl_seconds=60)
    for held in range(app.settings.quota_concurrent_turns):  # turns running elsewhere, on any instance
        assert await leases.acquire(session_id, f"turn_elsewhere_{held}", app.settings.quota_concurrent_turns)
    with pytest.raises(GRPCError) as error:
        [r async for r in AgentServiceStub(channel).chat(
            [ChatRequest(send=SendMessage(conversation_id="c", text="hello"))], timeout=30, metadata=bearer(token))]
    assert reason(error.value) == "CONCURRENT_TURNS"


async def upload(channel: Channel, token: str, name: str, data: bytes, *, declare: bool = True) -> Status | None:
    messages = [UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data) if declare else 0)),
                UploadRequest(chunk=data)]
    try:
        events = [r.event async for r in DocumentServiceStub(channel).upload(messages, timeout=30,
                                                                              metadata=bearer(token))]
    except GRPCError as error:
        return error.status
    assert events[-1].stored is not None
    return None


async def test_document_and_byte_quotas(channel: Channel) -> None:
    token = await new_session(channel)
    assert await upload(channel, token, "a.md", b"# A\n\nfirst document\n") is None
    assert await upload(channel, token, "big.md", b"# Big\n\n" + b"word " * 3000) == Status.RESOURCE_EXHAUSTED
    assert await upload(channel, token, "big.md", b"# Big\n\n" + b"word " * 3000,
                        declare=False) == Status.RESOURCE_EXHAUSTED  # caught after receiving, before storing
    assert await upload(channel, token, "b.md", b"# B\n\nsecond document\n") is None
    assert await upload(channel, token, "c.md", b"# C\n\nthird document\n") == Status.RESOURCE_EXHAUSTED


async def test_admin_reads_a_session_but_cannot_write_and_every_read_is_audited(channel: Channel) -> None:
    token = await new_session(channel)
    assert await upload(channel, token, "a.md", b"# A\n\nsecret plans\n") is None
    docs = DocumentServiceStub(channel)
    document = (await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))).documents[0]
    session_id = (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                                metadata=bearer(token))).session.id
    admin = {"authorization": f"Bearer {ADMIN}", "x-daveloper-session": session_id}
    got = await docs.get_document(GetDocumentRequest(document_id=document.id), timeout=5, metadata=admin)
    assert got.document.name == "a.md"
    with pytest.raises(GRPCError) as error:
        await docs.delete_document(DeleteDocumentRequest(document_id=document.id), timeout=5, metadata=admin)
    assert error.value.status == Status.PERMISSION_DENIED
    assert reason(error.value) == "ADMIN_READ_ONLY"

    await docs.delete_document(DeleteDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(token))

    logs = LogsServiceStub(channel)
    deleted = (await logs.list_audit_events(ListAuditEventsRequest(kind="document.deleted"), timeout=5,
                                            metadata=bearer(ADMIN))).events
    assert [(e.session_id, e.fields["document_id"]) for e in deleted] == [(session_id, document.id)]
    with pytest.raises(GRPCError) as error:
        await logs.list_audit_events(ListAuditEventsRequest(), timeout=5, metadata=bearer(token))
    assert error.value.status == Status.PERMISSION_DENIED
    events = (await logs.list_audit_events(ListAuditEventsRequest(kind="admin.read"), timeout=5,
                                           metadata=bearer(ADMIN))).events
    assert [e.session_id for e in events] == [session_id]
    assert events[0].method == "/daveloper.v1.DocumentService/GetDocument"
    assert events[0].request_id


async def test_failures_and_refusals_are_audited_with_the_client_address(channel: Channel) -> None:
    with pytest.raises(GRPCError):
        await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                      metadata=as_client("192.0.2.77", "v1.bogus.1.sig"))
    token = await new_session(channel, "192.0.2.78")
    await calls_allowed(channel, as_client("192.0.2.78", token), 9)
    logs = LogsServiceStub(channel)
    page = await logs.list_audit_events(ListAuditEventsRequest(page_size=50), timeout=5, metadata=bearer(ADMIN))
    kinds = {(e.kind, e.client_address) for e in page.events}
    assert ("auth.failed", "192.0.2.77") in kinds
    assert ("rate_limited", "192.0.2.78") in kinds
    failed = next(e for e in page.events if e.kind == "auth.failed")
    assert failed.fields["reason"] == "TOKEN_INVALID"  # well formed, bad signature
    assert "bogus" not in str(failed.to_dict())  # the token itself is never recorded
    first = await logs.list_audit_events(ListAuditEventsRequest(page_size=1), timeout=5, metadata=bearer(ADMIN))
    second = await logs.list_audit_events(ListAuditEventsRequest(page_size=1, page_token=first.next_page_token),
                                          timeout=5, metadata=bearer(ADMIN))
    assert first.events[0].time >= second.events[0].time
    assert first.events[0] != second.events[0]


async def test_the_edge_answers_429_with_retry_after_per_forwarded_client(app: App) -> None:
    url = app.edge.url + "/daveloper.v1.SessionService/CreateSession"
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(4):
            # The test is the trusted proxy (127.0.0.1): the edge believes its X-Forwarded-For.
            async with http.post(url, json={}, headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.99"}) as response:
                statuses.append(response.status)
                last = response
                body = await response.json()
        assert statuses == [200, 200, 200, 429]
        assert int(last.headers["Retry-After"]) >= 1
        assert body["code"] == "resource_exhausted"
        async with http.post(url, json={}, headers={"X-Forwarded-For": "203.0.113.100"}) as response:
            assert response.status == 200


async def test_get_session_reports_quotas_with_use_and_rate_limits_with_what_is_left(channel: Channel) -> None:
    token = await new_session(channel)
    uploaded = time.monotonic()
    assert await upload(channel, token, "a.md", b"# A\n\nfirst document\n") is None
    got = await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5, metadata=bearer(token))
    quotas = {q.name: (q.limit, q.used) for q in got.quotas}
    assert quotas["documents"] == (2, 1)
    assert quotas["stored_bytes"][0] == 10_000
    assert 0 < quotas["stored_bytes"][1] < 100
    assert quotas["concurrent_turns"][1] == 0
    assert set(quotas) >= {"concurrent_jobs", "scrape_pages_today"}
    limits = {r.method_class: r for r in got.rate_limits}
    assert limits["calls"].burst == 8
    assert limits["calls"].per_minute == pytest.approx(8 / 60)
    # The upload took an "uploads" token, GetSession itself a "calls" token.
    assert limits["calls"].available == pytest.approx(7, abs=0.1)
    # One "uploads" token taken, refilling since (a slow machine sees some of it back).
    refilled = limits["uploads"].per_minute / 60 * (time.monotonic() - uploaded)
    assert 99 - 0.1 <= limits["uploads"].available <= 99 + refilled + 0.1


async def test_calls_are_still_charged_after_the_server_lost_its_scripts(channel: Channel,
                                                                        redis: aioredis.Redis) -> None:
    token = await new_session(channel)
    assert await calls_allowed(channel, as_client("198.51.100.7", token), 3) == (3, None)
    await redis.script_flush()  # as a restarted server without persistence would have it
    allowed, refusal = await calls_allowed(channel, as_client("198.51.100.7", token), 10)
    assert allowed == 5  # the same bucket: 8 calls per hour in all
    assert refusal is not None
