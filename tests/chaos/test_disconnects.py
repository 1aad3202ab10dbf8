"""Chaos, scaled down for CI: hundreds of clients leaving mid-turn over gRPC and WebSocket, and a Valkey restart.

Afterwards every turn has ended (within the lease time + 10 s), every conversation's
log holds each of its events once, in seq order, with each turn's text whole, no
handler is left in flight, no Valkey client is blocked, and no ERROR was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from daveloper.infra.valkey import EmbeddedValkey
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    GetConversationRequest,
    SendMessage,
    SessionServiceStub,
    TurnState,
    WatchRequest,
    WatchResponse,
)
from tests.agent.openai_server import FakeOpenAI, Script
from tests.edge.client import connect
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(120)

GRPC_DROPS = 200
WS_DROPS = 40
WORKERS = 8
SESSIONS = 4
PIECES = [f"t{i} " for i in range(30)]


@dataclass
class Chaos:
    """What the clients did: the conversations they sent to, per session token."""

    tokens: list[str]
    rng: random.Random
    conversations: dict[str, set[str]] = field(default_factory=dict)
    drops: int = 0
    ws_drops: int = 0
    refused: int = 0

    def conversation(self, token: str) -> str:
        mine = self.conversations.setdefault(token, set())
        if mine and self.rng.random() < 0.3:  # sometimes a follow-up: turns queue in one conversation
            return self.rng.choice(sorted(mine))
        name = f"chaos-{len(mine)}"
        mine.add(name)
        return name


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    async with EmbeddedValkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        server.fallback = Script(text=PIECES, delay=0.01)
        yield server


@pytest.fixture
async def chaos_app(settings: Settings, valkey: EmbeddedValkey, llm: FakeOpenAI) -> AsyncIterator[App]:
    settings = settings.replace(redis_url=valkey.url, llm_base_url=llm.url, llm_api_key="sk-test",
                                llm_model="fake-model", rate_chat_turns="100000/min", rate_calls="100000/min",
                                rate_sessions="1000/min", quota_concurrent_turns=1000, heartbeat_seconds=0.5)
    async with open_app(settings) as app:
        yield app


async def grpc_drop(channel: Channel, chaos: Chaos) -> None:
    """A Chat (or a Watch) that the client leaves after a random moment."""
    token = chaos.rng.choice(chaos.tokens)
    delay = chaos.rng.choice([0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    stream: Stream[ChatRequest, ChatResponse] | Stream[WatchRequest, WatchResponse]
    # A client leaving a stream the server already ended may find it closed: that is its own business.
    with contextlib.suppress(GRPCError, StreamTerminatedError, StreamClosedError, ConnectionError):
        if chaos.rng.random() < 0.75 or not chaos.conversations.get(token):
            send = SendMessage(conversation_id=chaos.conversation(token), text="go",
                               client_message_id=f"m{chaos.rng.getrandbits(64):x}")
            async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                                       ChatResponse, timeout=10, metadata=bearer(token)) as stream:
                await stream.send_message(ChatRequest(send=send))
                await read_for(stream, delay)
                await stream.cancel()
        else:
            conversation = chaos.rng.choice(sorted(chaos.conversations[token]))
            async with channel.request("/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest,
                                       WatchResponse, timeout=10, metadata=bearer(token)) as stream:
                await stream.send_message(WatchRequest(conversation_id=conversation), end=True)
                await read_for(stream, delay)
                await stream.cancel()
    chaos.drops += 1


async def read_for(stream: Stream[object, object], seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while await stream.recv_message() is not None:
                pass


async def ws_drop(http: aiohttp.ClientSession, edge: Edge, chaos: Chaos) -> None:
    """A WebSocket that opens a Chat and goes away (socket closed, or the stream cancelled) mid-turn."""
    token = chaos.rng.choice(chaos.tokens)
    send = {"conversationId": chaos.conversation(token), "text": "go",
            "clientMessageId": f"w{chaos.rng.getrandbits(64):x}"}
    with contextlib.suppress(aiohttp.ClientError, AssertionError, ConnectionError, TimeoutError):
        socket = await connect(http, edge, token=token)
        await socket.send({"type": "open", "id": 1, "method": "/daveloper.v1.AgentService/Chat",
                           "message": {"send": send}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(chaos.rng.choice([0, 0.01, 0.05, 0.1])):
                while True:
                    await socket.recv()
        if chaos.rng.random() < 0.5:
            await socket.send({"type": "cancel", "id": 1})
        await socket.ws.close()
    chaos.ws_drops += 1


async def restart(valkey: EmbeddedValkey, after: float, down: float) -> None:
    await asyncio.sleep(after)
    await valkey.stop()
    await asyncio.sleep(down)
    await valkey.start()


async def until_redis(channel: Channel) -> str:
    """A new session's token, once Redis answers again."""
    async with asyncio.timeout(20):
        while True:
            try:
                return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token
            except GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)


async def ended_log(stub: AgentServiceStub, token: str, conversation: str) -> list[ChatEvent] | None:
    """The conversation's whole log once every turn in its record has ended; None if it has no turn."""
    while True:
        try:
            got = await stub.get_conversation(GetConversationRequest(conversation_id=conversation), timeout=5,
                                              metadata=bearer(token))
        except GRPCError as exc:
            if exc.status is Status.NOT_FOUND:
                return None  # its only send was refused before the turn existed
            if exc.status is not Status.UNAVAILABLE:
                raise
            await asyncio.sleep(0.2)
            continue
        if got.turns and all(t.state is not TurnState.RUNNING for t in got.turns):
            events: list[ChatEvent] = []
            async for response in stub.watch(WatchRequest(conversation_id=conversation), timeout=10,
                                             metadata=bearer(token)):
                if response.event is not None:
                    events.append(response.event)
                    if response.event.seq >= got.conversation.last_seq:
                        return events
        await asyncio.sleep(0.2)


def check_log(events: list[ChatEvent]) -> None:
    """Seqs 1..n once each; one turn after another, each from its start to one end, its text whole."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    turns: dict[str, list[ChatEvent]] = {}
    for event in events:
        turns.setdefault(event.turn_id, []).append(event)
    for turn_events in turns.values():
        assert turn_events[0].turn_started is not None
        ends = [e for e in turn_events if e.turn_completed is not None or e.turn_failed is not None]
        assert ends == [turn_events[-1]]
        text = "".join(e.token_delta.text for e in turn_events if e.token_delta is not None)
        end = turn_events[-1]
        if end.turn_completed is not None:
            assert text == end.turn_completed.text == "".join(PIECES)
        else:
            assert text == end.turn_failed.partial_text


async def test_hundreds_of_dropped_clients_and_a_valkey_restart_lose_nothing_and_leave_nothing(
    chaos_app: App, valkey: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = chaos_app
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
    sessions = SessionServiceStub(channel)
    tokens = [(await sessions.create_session(CreateSessionRequest(), timeout=5)).token for _ in range(SESSIONS)]
    chaos = Chaos(tokens, random.Random(14))
    loop = asyncio.get_running_loop()
    try:
        async with open_edge(app.settings, upstreams=[app.grpc_addr], health=app.health) as edge, \
                aiohttp.ClientSession() as http:
            grpc_left, ws_left = GRPC_DROPS, WS_DROPS

            async def worker() -> None:
                nonlocal grpc_left, ws_left
                while grpc_left or ws_left:
                    if ws_left and (not grpc_left or chaos.rng.random() < WS_DROPS / (GRPC_DROPS + WS_DROPS)):
                        ws_left -= 1
                        await ws_drop(http, edge, chaos)
                    else:
                        grpc_left -= 1
                        await grpc_drop(channel, chaos)

            async with asyncio.TaskGroup() as group:
                group.create_task(restart(valkey, after=1.0, down=3.0))
                for _ in range(WORKERS):
                    group.create_task(worker())
            assert chaos.drops == GRPC_DROPS
            assert chaos.ws_drops == WS_DROPS

            # Every client is gone: no handler stays in flight (in-flight gauges back to 0).
            async with asyncio.timeout(2.5):
                while app.interceptor.inflight:  # noqa: ASYNC110 - polling a counter
                    await asyncio.sleep(0.02)
            left = loop.time()

            await until_redis(channel)
            stub = AgentServiceStub(channel)
            checked = 0
            async with asyncio.timeout(app.settings.lease_seconds + 10):
                for token, conversations in chaos.conversations.items():
                    for conversation in sorted(conversations):
                        events = await ended_log(stub, token, conversation)
                        if events is not None:
                            check_log(events)
                            checked += 1
            assert checked > len(tokens)
            assert loop.time() - left < app.settings.lease_seconds + 10
    finally:
        channel.close()
    async with asyncio.timeout(2.5):
        while app.interceptor.inflight:  # noqa: ASYNC110 - the checks' own calls end as well
            await asyncio.sleep(0.02)
    client = aioredis.Redis.from_url(valkey.url)
    try:
        blocked = [c for c in await client.client_list() if "b" in c.get("flags", "")]
    finally:
        await client.aclose()
    assert blocked == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
