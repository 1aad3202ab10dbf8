"""A turn's session slot is free by the time its client sees the turn end: the next message is admitted at once."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from daveloper.config import Settings
from daveloper.leases import LeaseSet
from generated.daveloper.v1 import (
    ChatRequest,
    ChatResponse,
    GetSessionRequest,
    SendMessage,
    SessionServiceStub,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

TURNS = 15


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(quota_concurrent_turns=1)


async def test_each_next_message_sent_as_the_last_turn_ends_is_admitted(channel: Channel, token: str,
                                                                       redis: aioredis.Redis) -> None:
    session_id = (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                                metadata=bearer(token))).session.id
    leases = LeaseSet(redis, "turns", ttl_seconds=60)
    stream: Stream[ChatRequest, ChatResponse]
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as stream:
        ended = 0
        await stream.send_message(ChatRequest(send=SendMessage(conversation_id="c", text="first")))
        while ended < TURNS:
            message = await stream.recv_message()
            assert message is not None
            event = message.event
            assert event is None or event.turn_failed is None, event.turn_failed
            if event is not None and event.turn_completed is not None:
                ended += 1
                assert await leases.count(session_id) == 0, f"turn {ended} still holds the session's one slot"
                if ended < TURNS:  # at once: with one slot, admitted only if the last turn's is already free
                    await stream.send_message(ChatRequest(send=SendMessage(conversation_id="c", text=f"n{ended}")))
        await stream.end()
