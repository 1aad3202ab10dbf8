"""AgentService with the ``openai`` provider against a local server speaking the real SSE wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from daveloper.app import App, open_app
from daveloper.config import Settings
from generated.daveloper.v1 import (
    AgentServiceStub,
    CancelTurnRequest,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    FinishReason,
    GetConversationRequest,
    SendMessage,
    TurnState,
    WatchRequest,
)
from tests.agent.openai_server import FakeOpenAI, Script, ScriptedCall
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

WORDS = [f"word{i} " for i in range(60)]



@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
def settings(settings: Settings, llm: FakeOpenAI) -> Settings:
    return settings.replace(llm_base_url=llm.url, llm_api_key="sk-test", llm_model="fake-model")


async def test_streams_a_turn_with_a_tool_round_trip(app: App, channel: Channel, token: str,
                                                     llm: FakeOpenAI) -> None:
    llm.enqueue(
        Script(tool_calls=[ScriptedCall("search_documents", arguments=['{"que', 'ry": "redis"}'])]),
        Script(text=["Use ", "the ", "URL."]),
    )
    events = [r.event async for r in AgentServiceStub(channel).chat(
        [ChatRequest(send=SendMessage(conversation_id="c", text="how to set redis?"))],
        timeout=30, metadata=bearer(token))]
    call = next(e.tool_call for e in events if e.tool_call is not None)
    assert (call.name, call.arguments_json) == ("search_documents", '{"query": "redis"}')
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert not result.is_error
    completed = events[-1].turn_completed
    assert (completed.text, completed.finish_reason) == ("Use the URL.", FinishReason.STOP)
    assert completed.usage.prompt_tokens > 0
    # The second request carried the tool call and its result back to the model.
    second = llm.requests[1]["messages"]
    assert [m["role"] for m in second][-2:] == ["assistant", "tool"]
    assert second[-1]["content"] == result.content
    offered = [t["function"]["name"] for t in llm.requests[0]["tools"]]
    assert offered == ["search_documents", "scrape_url", "github_repo"]


async def test_malformed_tool_arguments_become_a_tool_error_and_the_turn_goes_on(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.enqueue(Script(tool_calls=[ScriptedCall("search_documents", arguments=["{not json"])]),
                Script(text=["Sorry."]))
    events = [r.event async for r in AgentServiceStub(channel).chat(
        [ChatRequest(send=SendMessage(text="x"))], timeout=30, metadata=bearer(token))]
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert result.is_error
    assert "JSON" in result.content
    assert events[-1].turn_completed.text == "Sorry."


async def test_bad_api_key_fails_the_turn_with_a_clear_status(app: App, channel: Channel, token: str,
                                                              llm: FakeOpenAI) -> None:
    llm.api_key = "sk-other"
    events = [r.event async for r in AgentServiceStub(channel).chat(
        [ChatRequest(send=SendMessage(text="x"))], timeout=30, metadata=bearer(token))]
    failed = events[-1].turn_failed
    assert failed is not None
    assert failed.failure.reason == "LLM_AUTH_FAILED"


async def test_dropped_client_resumes_with_watch_and_gets_the_exact_text(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.enqueue(Script(text=WORDS, delay=0.005))
    seen: list[ChatEvent] = []
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as stream:
        await stream.send_message(ChatRequest(send=SendMessage(conversation_id="drop", text="go")))
        while sum(1 for e in seen if e.token_delta is not None) < 2:
            seen.append((await stream.recv_message()).event)
        await stream.cancel()  # the connection drops mid-answer
    resumed = [r.event async for r in _watch_until_done(channel, token, "drop", seen[-1].seq)]
    events = seen + resumed
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    text = "".join(e.token_delta.text for e in events if e.token_delta is not None)
    assert text == "".join(WORDS) == events[-1].turn_completed.text


async def _watch_until_done(channel: Channel, token: str, conversation: str, after: int) -> AsyncIterator[ChatResponse]:
    async with channel.request("/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as stream:
        await stream.send_message(WatchRequest(conversation_id=conversation, after_seq=after), end=True)
        while True:
            response = await stream.recv_message()
            yield response
            if response.event.turn_completed is not None or response.event.turn_failed is not None:
                break
        await stream.cancel()


async def test_cancel_from_another_connection_closes_the_upstream_stream(
    app: App, token: str, llm: FakeOpenAI
) -> None:
    llm.enqueue(Script(text=["partial ", "answer "], stall=True))
    cancels = app.metrics.registry.get_sample_value("daveloper_cancel_latency_seconds_count", {"kind": "turn"}) or 0
    first, second = (Channel(app.grpc_addr.host, app.grpc_addr.port) for _ in range(2))
    try:
        chat = AgentServiceStub(first).chat([ChatRequest(send=SendMessage(conversation_id="k", text="go"))],
                                            timeout=30, metadata=bearer(token))
        events: list[ChatEvent] = []
        cancelled = False
        async for response in chat:
            events.append(response.event)
            streamed = sum(len(e.token_delta.text) for e in events if e.token_delta is not None)
            if not cancelled and streamed >= len("partial answer "):
                cancelled = True
                answer = await AgentServiceStub(second).cancel_turn(
                    CancelTurnRequest(conversation_id="k", turn_id=response.event.turn_id),
                    timeout=5, metadata=bearer(token))
                assert answer.cancelled
        await asyncio.wait_for(llm.disconnected.wait(), 5)
        got = await AgentServiceStub(second).get_conversation(
            GetConversationRequest(conversation_id="k"), timeout=5, metadata=bearer(token))
    finally:
        first.close()
        second.close()
    completed = events[-1].turn_completed
    assert completed.finish_reason is FinishReason.CANCELLED
    assert completed.text == "partial answer "
    assert got.turns[0].state is TurnState.COMPLETED
    assert got.turns[0].assistant_text == "partial answer "
    assert app.metrics.registry.get_sample_value("daveloper_cancel_latency_seconds_count",
                                                 {"kind": "turn"}) == cancels + 1


async def test_a_turn_running_on_one_instance_is_watched_on_another(
    app: App, channel: Channel, token: str, llm: FakeOpenAI, settings: Settings
) -> None:
    llm.enqueue(Script(text=WORDS, delay=0.003))
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as stream:
        await stream.send_message(ChatRequest(send=SendMessage(conversation_id="ab", text="go")), end=True)
        started = (await stream.recv_message()).event
        await stream.cancel()
    other = settings.replace(data_dir=settings.data_dir.parent / "instance-b", instance_id="b")
    async with open_app(other) as second:
        channel_b = Channel(second.grpc_addr.host, second.grpc_addr.port)
        try:
            events = [r.event async for r in _watch_until_done(channel_b, token, "ab", 0)]
        finally:
            channel_b.close()
    assert events[0].turn_started.owner == "test"  # instance A ran it
    assert events[0].turn_id == started.turn_id
    assert "".join(e.token_delta.text for e in events if e.token_delta is not None) == "".join(WORDS)

