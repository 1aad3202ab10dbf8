"""Admission at saturation: past ``max_running_turns`` a new turn is refused at once, with a retry delay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.app import App, open_app
from daveloper.config import Settings
from generated.daveloper.v1 import (
    AgentServiceStub,
    CancelTurnRequest,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    FinishReason,
    GetConversationRequest,
    SendMessage,
    SessionServiceStub,
    WatchRequest,
)
from tests.agent.openai_server import FakeOpenAI, Script
from tests.grpc_helpers import bearer, reason, retry_seconds

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        server.fallback = Script(text=["working "], stall=True)  # every turn runs until cancelled
        yield server


@pytest.fixture
def settings(settings: Settings, llm: FakeOpenAI) -> Settings:
    return settings.replace(llm_base_url=llm.url, llm_api_key="sk-test", llm_model="fake-model",
                            max_running_turns=2, quota_concurrent_turns=10)


@contextlib.asynccontextmanager
async def running_turn(channel: Channel, token: str, conversation: str) -> AsyncIterator[ChatEvent]:
    """A Chat stream whose turn has streamed its first text; yields that event."""
    stream: Stream[ChatRequest, ChatResponse]
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as stream:
        await stream.send_message(ChatRequest(send=SendMessage(conversation_id=conversation, text="go")))
        while True:
            message = await stream.recv_message()
            assert message is not None
            if message.event.token_delta is not None:
                break
        yield message.event
        await stream.cancel()


async def watch_until_done(channel: Channel, token: str, conversation: str) -> FinishReason:
    async for response in AgentServiceStub(channel).watch(WatchRequest(conversation_id=conversation), timeout=10,
                                                          metadata=bearer(token)):
        if response.event.turn_completed is not None:
            return response.event.turn_completed.finish_reason
    raise AssertionError("the watch ended without turn_completed")


async def test_a_turn_past_the_limit_is_refused_at_once_with_a_retry_delay(app: App, channel: Channel,
                                                                           token: str) -> None:
    stub = AgentServiceStub(channel)
    async with running_turn(channel, token, "a") as first, running_turn(channel, token, "b"):
        with pytest.raises(GRPCError) as refused:
            async for _ in stub.chat([ChatRequest(send=SendMessage(conversation_id="c", text="one more"))],
                                     timeout=10, metadata=bearer(token)):
                pass
        assert refused.value.status is Status.UNAVAILABLE
        assert reason(refused.value) == "TURNS_SATURATED"
        assert retry_seconds(refused.value) == 1.0
        # A new stream is refused before it is authenticated (no Redis round trip): even a bad token learns only
        # that this instance is saturated.
        with pytest.raises(GRPCError) as early:
            async for _ in stub.chat([ChatRequest(send=SendMessage(conversation_id="c", text="one more"))],
                                     timeout=10, metadata=bearer("not-a-token")):
                pass
        assert (early.value.status, reason(early.value)) == (Status.UNAVAILABLE, "TURNS_SATURATED")
        # One finishes: the next turn is admitted.
        await stub.cancel_turn(CancelTurnRequest(conversation_id="a", turn_id=first.turn_id), timeout=5,
                               metadata=bearer(token))
        assert await watch_until_done(channel, token, "a") is FinishReason.CANCELLED
        async with running_turn(channel, token, "c") as third:
            assert third.turn_id
            await stub.cancel_turn(CancelTurnRequest(conversation_id="c", turn_id=third.turn_id), timeout=5,
                                   metadata=bearer(token))
    # The refused message left nothing behind: conversation "c" holds only the admitted turn.
    conversation = await stub.get_conversation(GetConversationRequest(conversation_id="c"), timeout=5,
                                               metadata=bearer(token))
    assert len(conversation.turns) == 1


async def test_a_new_stream_holds_a_starting_slot_until_its_first_message(settings: Settings, llm: FakeOpenAI,
                                                                          redis: Any) -> None:
    # One turn may be starting: a stream that has not sent its first message yet holds that slot, so the
    # next new stream is refused on arrival, before its token is even checked.
    async with open_app(settings.replace(max_running_turns=10, max_starting_turns=1)) as app:
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token
            stream: Stream[ChatRequest, ChatResponse]
            async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM,
                                       ChatRequest, ChatResponse, timeout=30, metadata=bearer(token)) as stream:
                await stream.send_request()
                while app.interceptor.inflight < 1:  # noqa: ASYNC110 - its handler runs: the slot is held
                    await asyncio.sleep(0.01)
                with pytest.raises(GRPCError) as refused:
                    async for _ in AgentServiceStub(channel).chat(
                            [ChatRequest(send=SendMessage(text="too soon"))], timeout=10,
                            metadata=bearer("not-a-token")):
                        pass
                assert (refused.value.status, reason(refused.value)) == (Status.UNAVAILABLE, "TURNS_SATURATED")
                # Its first message gives the slot back and its turn takes it: the turn starts.
                await stream.send_message(ChatRequest(send=SendMessage(conversation_id="held", text="go")))
                while (message := await stream.recv_message()) is not None and message.event.token_delta is None:
                    pass
                assert message is not None
                await stream.cancel()
        finally:
            channel.close()
