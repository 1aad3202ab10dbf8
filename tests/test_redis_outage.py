"""Redis stops while the service runs: health says so, calls fail fast with UNAVAILABLE, and all recovers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.infra.valkey import EmbeddedValkey
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    CreateSessionRequest,
    DocumentServiceStub,
    GetConversationRequest,
    GetSessionRequest,
    ListDocumentsRequest,
    SendMessage,
    SessionServiceStub,
    TurnState,
    WatchRequest,
)
from tests.agent.openai_server import FakeOpenAI, Script
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(90)

SERVING, NOT_SERVING = HealthCheckResponse.SERVING, HealthCheckResponse.NOT_SERVING
#: No call may take longer than this while Redis is down: a hang fails the test.
FAST = 8.0


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    async with EmbeddedValkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture
async def app(settings: Settings, valkey: EmbeddedValkey) -> AsyncIterator[App]:
    async with open_app(settings.replace(redis_url=valkey.url)) as running:
        running.health._interval = 0.1  # poll often, so the test does not wait for the default period
        yield running


async def health(channel: Channel, service: str = "") -> object:
    return (await HealthStub(channel).Check(HealthCheckRequest(service=service), timeout=FAST)).status


async def until_health(channel: Channel, wanted: object) -> None:
    async with asyncio.timeout(20):
        while await health(channel, "daveloper.v1.SessionService") != wanted:  # noqa: ASYNC110 - polling the RPC
            await asyncio.sleep(0.05)


async def chat_once(channel: Channel, token: str) -> None:
    requests = [ChatRequest(send=SendMessage(conversation_id="outage", text="hello"))]
    events = [r.event async for r in AgentServiceStub(channel).chat(requests, metadata=bearer(token), timeout=FAST)]
    assert events[-1] is not None
    assert events[-1].turn_completed is not None


async def test_calls_fail_fast_while_redis_is_down_and_work_again_after(
    app: App, channel: Channel, valkey: EmbeddedValkey, http: aiohttp.ClientSession
) -> None:
    sessions = SessionServiceStub(channel)
    token = (await sessions.create_session(CreateSessionRequest(), timeout=FAST)).token
    await until_health(channel, SERVING)

    await valkey.stop()
    await until_health(channel, NOT_SERVING)
    assert await health(channel) == NOT_SERVING
    async with http.get(f"{app.edge.url}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["dependencies"]["redis"] == "not_serving"

    calls = {
        "CreateSession": sessions.create_session(CreateSessionRequest(), timeout=FAST),
        "GetSession": sessions.get_session(GetSessionRequest(), metadata=bearer(token), timeout=FAST),
        "ListDocuments": DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), metadata=bearer(token),
                                                                     timeout=FAST),
        "Chat": chat_once(channel, token),
    }
    for name, call in calls.items():
        with pytest.raises(GRPCError) as failed:
            await call
        assert failed.value.status is Status.UNAVAILABLE, (name, failed.value)
    # Through the edge too: HTTP/JSON answers 503 with the gRPC code.
    async with http.post(f"{app.edge.url}/daveloper.v1.SessionService/CreateSession", json={}) as response:
        assert response.status == 503
        assert (await response.json())["code"] == "unavailable"

    await valkey.start()
    await until_health(channel, SERVING)
    async with asyncio.timeout(20):
        while True:  # the first calls may still meet connections the outage broke
            try:
                token = (await sessions.create_session(CreateSessionRequest(), timeout=FAST)).token
                break
            except GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)
    got = await sessions.get_session(GetSessionRequest(), metadata=bearer(token), timeout=FAST)
    assert got.session is not None
    await chat_once(channel, token)
    async with http.get(f"{app.edge.url}/readyz") as response:
        assert response.status == 200


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def slow_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        server.fallback = Script(text=[f"word{i} " for i in range(80)], delay=0.05)  # 4 s of streaming
        yield server


async def test_a_turn_rides_out_a_valkey_restart_and_its_stream_ends_unavailable_at_once(
    settings: Settings, valkey: EmbeddedValkey, slow_llm: FakeOpenAI
) -> None:
    settings = settings.replace(redis_url=valkey.url, llm_base_url=slow_llm.url, llm_api_key="sk-test",
                                llm_model="fake-model")
    async with open_app(settings) as app:
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=FAST)).token
            stub = AgentServiceStub(channel)
            seen: list[ChatEvent] = []
            loop = asyncio.get_running_loop()
            stopped = 0.0

            async def chat_until_valkey_stops() -> None:
                nonlocal stopped
                async for response in stub.chat([ChatRequest(send=SendMessage(conversation_id="restart",
                                                                              text="talk"))],
                                                timeout=60, metadata=bearer(token)):
                    seen.append(response.event)
                    if len(seen) == 3:
                        await valkey.stop()
                        stopped = loop.time()

            with pytest.raises(GRPCError) as ended:
                await chat_until_valkey_stops()
            # At once, not at the deadline: the open stream's read failed.
            assert ended.value.status is Status.UNAVAILABLE
            assert loop.time() - stopped < 5
            await asyncio.sleep(3)
            await valkey.start()

            # The owner rode it out: resuming from the last seen seq gets the rest, each event once.
            rest: list[ChatEvent] = []
            async with asyncio.timeout(settings.lease_seconds + 10):
                while not rest or (rest[-1].turn_completed is None and rest[-1].turn_failed is None):
                    await watch_from(stub, token, (rest or seen)[-1].seq, rest)
            events = seen + rest
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            completed = events[-1].turn_completed
            assert completed is not None, events[-1]
            assert "".join(e.token_delta.text for e in events if e.token_delta is not None) == completed.text
            assert completed.text == "".join(f"word{i} " for i in range(80))
            got = await stub.get_conversation(GetConversationRequest(conversation_id="restart"), timeout=FAST,
                                              metadata=bearer(token))
            assert [t.state for t in got.turns] == [TurnState.COMPLETED]
        finally:
            channel.close()


async def watch_from(stub: AgentServiceStub, token: str, after: int, into: list[ChatEvent]) -> None:
    """Watch "restart" after ``after`` until its turn ends; a call that meets a connection the restart
    broke (UNAVAILABLE) just ends early."""
    try:
        async for response in stub.watch(WatchRequest(conversation_id="restart", after_seq=after), timeout=30,
                                         metadata=bearer(token)):
            into.append(response.event)
            if response.event.turn_completed is not None or response.event.turn_failed is not None:
                return
    except GRPCError as exc:
        if exc.status is not Status.UNAVAILABLE:
            raise
        await asyncio.sleep(0.2)
