"""Every turn reaches its end: a client leaving while its turn starts neither loses nor strands it."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from daveloper.app import App
from daveloper.config import Settings
from daveloper.keys import Keys
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    GetConversationRequest,
    SendMessage,
    TurnState,
    WatchRequest,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

DELAYS_MS = (0, 1, 2, 5, 10, 20, 40, 80)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(quota_concurrent_turns=50)


async def send_and_leave(channel: Channel, token: str, send: SendMessage, delay: float) -> None:
    """Send a message on a Chat stream, then cancel the call ``delay`` seconds later."""
    stream: Stream[ChatRequest, ChatResponse]
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=10, metadata=bearer(token)) as stream:
        await stream.send_message(ChatRequest(send=send))
        await asyncio.sleep(delay)
        await stream.cancel()


async def test_a_client_leaving_while_its_turn_starts_strands_nothing(app: App, channel: Channel, token: str,
                                                                       redis: aioredis.Redis) -> None:
    sends = {delay: SendMessage(conversation_id=f"window-{delay}", text="What is the drain timeout?",
                                client_message_id=f"msg-{delay}") for delay in DELAYS_MS}
    await asyncio.gather(*(send_and_leave(channel, token, send, delay / 1000) for delay, send in sends.items()))

    stub = AgentServiceStub(channel)
    for delay, send in sends.items():
        # The resend returns that turn's events, from its start to its end (or starts it, if the first
        # send never arrived).
        events: list[ChatEvent] = [r.event async for r in stub.chat([ChatRequest(send=send)], timeout=10,
                                                                    metadata=bearer(token))]
        assert events[0].turn_started is not None, delay
        assert events[0].turn_started.client_message_id == send.client_message_id
        assert events[-1].turn_completed is not None, (delay, events[-1])
        assert len({e.turn_id for e in events}) == 1
        got = await stub.get_conversation(GetConversationRequest(conversation_id=send.conversation_id),
                                          timeout=5, metadata=bearer(token))
        assert [t.state for t in got.turns] == [TurnState.COMPLETED], delay
    # Nothing held: no turn counted as running here, no work lease, no session turn slot.
    async with asyncio.timeout(5):
        while app.interceptor.inflight:  # noqa: ASYNC110 - the handlers end as their clients leave
            await asyncio.sleep(0.01)
    assert await redis.zcard(Keys().work) == 0
    assert [key async for key in redis.scan_iter("dv:leases:turns:*")] == []


async def test_watch_on_a_conversation_with_no_events_yet_waits_for_its_first_turn(channel: Channel,
                                                                                   token: str) -> None:
    stub = AgentServiceStub(channel)

    async def watch() -> list[ChatEvent]:
        events = []
        async for response in stub.watch(WatchRequest(conversation_id="later"), timeout=10, metadata=bearer(token)):
            events.append(response.event)
            if response.event.turn_completed is not None:
                return events
        raise AssertionError("the watch ended before the turn did")

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    assert not watching.done()  # waiting, not NOT_FOUND
    sent = [r.event async for r in stub.chat([ChatRequest(send=SendMessage(conversation_id="later", text="hi"))],
                                             timeout=10, metadata=bearer(token))]
    assert await watching == sent
