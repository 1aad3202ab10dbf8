"""``/metrics`` after real work: a chat turn over a WebSocket and over gRPC, an upload, a rate-limited call,
a resumed and an expired event-log cursor. Each app counts into a ``Metrics`` of its own, so the values read
are that app's alone, whatever else runs in the process."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from daveloper.agent.turns import conversation_scope
from daveloper.app import App, open_app
from daveloper.config import Address, Settings
from daveloper.metrics import Metrics, instrument_redis
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatRequest,
    CreateSessionRequest,
    DocumentServiceStub,
    GetSessionRequest,
    SendMessage,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
    WatchRequest,
)
from tests.edge.client import connect
from tests.grpc_helpers import bearer
from tests.test_cli import free_port

CHAT = "/daveloper.v1.AgentService/Chat"
GUIDE = b"# Redis\n\nPoint DAVELOPER_REDIS_URL at your Redis server to share state between instances.\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, url: str, *, token: str = "") -> Samples:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"} if token else None) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[App]:
    # Four chat turns a minute per session: the fifth is refused.
    async with open_app(settings.replace(rate_chat_turns="4/min"), metrics=Metrics()) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_metrics_count_what_the_server_did(app: App, channel: Channel, http: aiohttp.ClientSession) -> None:
    url = f"{app.edge.url}/metrics"
    before = await scrape(http, url)
    assert value(before, "daveloper_dependency_up", dependency="redis") == 1  # the start-up health check
    assert value(before, "daveloper_rpc_requests_total", method=CHAT, code="OK") == 0
    token = (await SessionServiceStub(channel).create_session(CreateSessionRequest())).token

    # An upload, then a chat turn over gRPC that searches it (a tool call) ...
    docs = DocumentServiceStub(channel)
    requests = [UploadRequest(header=UploadHeader(file_name="redis.md", size_bytes=len(GUIDE))),
                UploadRequest(chunk=GUIDE)]
    [r async for r in docs.upload(requests, metadata=bearer(token), timeout=30)]
    agent = AgentServiceStub(channel)
    chat = [ChatRequest(send=SendMessage(conversation_id="m1", text="How do I point it at my Redis server?"))]
    events = [r.event async for r in agent.chat(chat, metadata=bearer(token), timeout=30)]
    assert events[-1] is not None
    assert events[-1].turn_completed is not None

    # ... and one over a WebSocket through the edge.
    client = await connect(http, app.edge, token=token)
    await client.send({"type": "open", "id": 1, "method": CHAT, "credit": 1000,
                       "message": {"send": {"conversationId": "m2", "text": "What is Redis for?"}}})
    while True:
        frame = await client.recv()
        if frame["type"] == "msg" and "turnCompleted" in frame["message"]["event"]:
            break
    during = await scrape(http, url)
    assert value(during, "daveloper_edge_sockets") == 1
    assert value(during, "daveloper_edge_streams") == 1
    assert value(during, "daveloper_rpc_in_flight", method=CHAT) == 1
    await client.ws.close()

    # A resumed Watch, then one whose cursor is no longer retained.
    async for response in agent.watch(WatchRequest(conversation_id="m1", after_seq=events[-1].seq - 1),
                                      metadata=bearer(token), timeout=5):
        assert response.event is not None
        assert response.event.turn_completed is not None
        break
    session = await SessionServiceStub(channel).get_session(GetSessionRequest(), metadata=bearer(token))
    assert session.session is not None
    await app.events.delete(conversation_scope(session.session.id, "m2"))  # as if it had expired
    with pytest.raises(GRPCError) as expired:
        [r async for r in agent.watch(WatchRequest(conversation_id="m2", after_seq=1), metadata=bearer(token),
                                      timeout=5)]
    assert expired.value.status is Status.FAILED_PRECONDITION

    # Turns 3, 4 pass the rate limit, the 5th is refused.
    async def turn(conversation_id: str) -> None:
        [r async for r in agent.chat([ChatRequest(send=SendMessage(conversation_id=conversation_id, text="hi"))],
                                     metadata=bearer(token), timeout=30)]

    await turn("r1")
    await turn("r2")
    with pytest.raises(GRPCError) as limited:
        await turn("r3")
    assert limited.value.status is Status.RESOURCE_EXHAUSTED
    after = await scrape(http, url)

    def got(name: str, **labels: str) -> float:
        return value(after, name, **labels)

    assert got("daveloper_rpc_requests_total", method=CHAT, code="OK") == 3
    # The WebSocket's Chat stream stayed open for more turns until the socket closed.
    assert got("daveloper_rpc_requests_total", method=CHAT, code="CANCELLED") == 1
    assert got("daveloper_rpc_requests_total", method=CHAT, code="RESOURCE_EXHAUSTED") == 1
    assert got("daveloper_rpc_requests_total", method="/daveloper.v1.DocumentService/Upload", code="OK") == 1
    assert got("daveloper_rpc_requests_total", method="/daveloper.v1.AgentService/Watch",
               code="FAILED_PRECONDITION") == 1
    assert got("daveloper_rpc_duration_seconds_count", method=CHAT) == 5
    assert got("daveloper_rpc_in_flight", method=CHAT) == 0
    assert got("daveloper_edge_sockets") == 0
    assert got("daveloper_edge_streams") == 0
    assert got("daveloper_rate_limited_total", limit="chat_turns") == 1
    assert got("daveloper_chat_turns_total", outcome="stop") == 4
    assert got("daveloper_chat_time_to_first_token_seconds_count") == 4
    assert got("daveloper_chat_turn_duration_seconds_count") == 4
    assert got("daveloper_chat_completion_tokens_total") > 0
    tools = got("daveloper_tool_calls_total", tool="search_documents", outcome="ok")
    assert tools >= 1
    assert got("daveloper_tool_duration_seconds_count", tool="search_documents") == tools
    assert got("daveloper_ingestions_total", outcome="stored") == 1
    assert got("daveloper_ingested_bytes_total") == len(GUIDE)
    assert got("daveloper_ingest_duration_seconds_count") == 1
    assert got("daveloper_eventlog_reads_total", kind="resume") >= 2  # both Watch calls
    assert got("daveloper_eventlog_expired_cursors_total") == 1
    assert got("daveloper_dependency_duration_seconds_count", dependency="redis", operation="pipeline") > 0
    assert got("daveloper_dependency_duration_seconds_count", dependency="redis", operation="evalsha") > 0
    assert got("daveloper_dependency_duration_seconds_count", dependency="qdrant", operation="upsert") >= 1
    assert got("daveloper_dependency_duration_seconds_count", dependency="qdrant", operation="query_points") >= 1
    rounds = got("daveloper_dependency_duration_seconds_count", dependency="llm", operation="offline")
    assert rounds >= 4  # a turn that calls a tool asks the model twice
    assert got("daveloper_llm_time_to_first_event_seconds_count", provider="offline") == rounds
    assert value(after, "daveloper_dependency_up", dependency="redis") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    # The breakers count into the app's registry too: the LLM's, GitHub's and the scraper's per-host map.
    for breaker in ("llm", "github"):
        assert ("daveloper_circuit_state", (("name", breaker),)) in after
    assert ("daveloper_circuits_open", (("name", "scrape_hosts"),)) in after


def test_no_module_holds_a_metrics_registry() -> None:
    """Every component counts into the Metrics it is given: none is kept at module level to fall back on."""
    import daveloper.metrics

    assert not [name for name, held in vars(daveloper.metrics).items() if isinstance(held, Metrics)]


async def test_a_grpc_only_instance_serves_metrics_on_its_own_port(
    app: App, channel: Channel, settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    grpc = settings.replace(role="grpc", metrics_addr=Address("127.0.0.1", port), metrics_token="scrape-me",
                            data_dir=tmp_path / "g")
    create = "/daveloper.v1.SessionService/CreateSession"
    async with open_app(grpc, metrics=Metrics()) as other:
        url = f"http://127.0.0.1:{port}/metrics"
        async with http.get(url) as refused:
            assert refused.status == 401
        other_channel = Channel(other.grpc_addr.host, other.grpc_addr.port)
        try:
            await SessionServiceStub(other_channel).create_session(CreateSessionRequest())
        finally:
            other_channel.close()
        for _ in range(2):  # calls to the first app are not the second's
            await SessionServiceStub(channel).create_session(CreateSessionRequest())
        counted = await scrape(http, url, token="scrape-me")
        first = await scrape(http, f"{app.edge.url}/metrics")
    assert value(counted, "daveloper_rpc_requests_total", method=create, code="OK") == 1
    assert value(first, "daveloper_rpc_requests_total", method=create, code="OK") == 2


def test_metrics_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"DAVELOPER_METRICS_ADDR": "0.0.0.0:9090", "DAVELOPER_METRICS_TOKEN": "scrape-me"})
    assert settings.metrics_addr == Address("0.0.0.0", 9090)
    assert settings.metrics_token == "scrape-me"
    assert Settings.from_env({}).metrics_token is None


async def test_a_timed_pipeline_is_freed_without_the_cyclic_collector(redis_url: str) -> None:
    """Timing a pipeline adds no reference cycle: used and dropped, it is freed at once (by refcount)."""
    metrics = Metrics()
    client = instrument_redis(aioredis.Redis.from_url(redis_url), metrics)
    gc.disable()
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("metrics:pipe", "1").get("metrics:pipe")
            assert await pipe.execute() == [True, b"1"]
        freed = weakref.ref(pipe)
        del pipe
        assert freed() is None
    finally:
        gc.enable()
        await client.aclose()
    timed = metrics.dependency_seconds.labels("redis", "pipeline")
    assert timed._sum.get() > 0  # type: ignore[attr-defined]
