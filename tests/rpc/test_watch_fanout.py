"""Watch through the whole app: stored events reach many concurrent watchers as stored, each once, in order."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from daveloper.agent.turns import conversation_scope
from daveloper.app import App
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    CreateSessionRequest,
    SendMessage,
    SessionServiceStub,
    TokenDelta,
    WatchRequest,
    WatchResponse,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

WATCH = "/daveloper.v1.AgentService/Watch"


async def test_concurrent_watchers_joining_mid_stream_each_get_every_event_once_in_order(
    app: App, channel: Channel
) -> None:
    created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
    auth = bearer(created.token)
    requests = [ChatRequest(send=SendMessage(conversation_id="conv_fanout", text="hello"))]
    turn = [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=auth)]
    scope = conversation_scope(created.session.id, "conv_fanout")
    first = await app.events.last_seq(scope) + 1
    total = first + 299  # the turn's events, then 300 more appended here while the watchers read

    def stored(seq: int) -> ChatEvent:
        return ChatEvent(conversation_id="conv_fanout", turn_id="turn_x", token_delta=TokenDelta(text=f"t{seq}"))

    async def watch(after_seq: int) -> list[ChatEvent]:
        received = []
        async with channel.request(WATCH, Cardinality.UNARY_STREAM, WatchRequest, WatchResponse,
                                   timeout=30, metadata=auth) as stream:
            await stream.send_message(WatchRequest(conversation_id="conv_fanout", after_seq=after_seq), end=True)
            async for response in stream:
                received.append(response.event)
                if response.event.seq == total:
                    break
            await stream.cancel()  # the conversation's log goes on: stop tailing it
        return received

    async def write() -> None:
        seq = first
        while seq <= total:
            batch = [bytes(stored(s)) for s in range(seq, min(seq + 1 + seq % 5, total + 1))]
            assert await app.events.append_many(scope, batch) == seq
            seq += len(batch)
            await asyncio.sleep(0.002)

    watchers: list[tuple[int, asyncio.Task[list[ChatEvent]]]] = []
    async with asyncio.TaskGroup() as tasks:
        watchers += [(0, tasks.create_task(watch(0))) for _ in range(15)]
        writer = tasks.create_task(write())
        for i in range(15):  # joining while the log grows: from the start, or from where it is now
            await asyncio.sleep(0.01)
            after = 0 if i % 2 else await app.events.last_seq(scope)
            watchers.append((after, tasks.create_task(watch(after))))
        await writer

    for after, task in watchers:
        events = task.result()
        assert [e.seq for e in events] == list(range(after + 1, total + 1))
        for event in events:
            if event.seq >= first:
                expected = stored(event.seq)
                expected.seq = event.seq
                assert event == expected  # the stored bytes, with their seq, decode to the event
            else:
                assert event == turn[event.seq - 1]  # the turn's own events, as Chat delivered them
    assert any(after > first for after, _ in watchers)  # some really joined mid-stream
    for _ in range(500):  # the handlers stop as the cancels reach them, and the subscription goes
        if app.events.scopes_followed == 0:
            break
        await asyncio.sleep(0.01)
    assert app.events.scopes_followed == 0
