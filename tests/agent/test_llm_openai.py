"""OpenAIChatModel through the real ``openai`` SDK against a local server speaking the chat completions SSE format."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from daveloper.agent.llm import OfflineChatModel, OpenAIChatModel, make_chat_model
from daveloper.agent.llm.openai import _sse_data
from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolCallRequest, ToolSpec
from daveloper.errors import ConfigError, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from tests.agent.openai_server import FakeOpenAI, Script, ScriptedCall

pytestmark = pytest.mark.timeout(20)

SEARCH = ToolSpec("search_documents", "Search the session's documents.",
                  {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})
QUESTION = [Message("system", "You are helpful."), Message("user", "How do I configure Redis?")]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def model(server: FakeOpenAI) -> AsyncIterator[OpenAIChatModel]:
    chat = OpenAIChatModel(base_url=server.url, api_key="sk-test", default_model="test-chat", timeout=5,
                           max_retries=2)
    try:
        yield chat
    finally:
        await chat.aclose()


async def collect(chat: OpenAIChatModel, messages: list[Message] = QUESTION, /, **kwargs: Any) -> list[ModelEvent]:
    return [event async for event in chat.stream(messages, **kwargs)]


def split(events: list[ModelEvent]) -> tuple[str, ModelDone]:
    *deltas, done = events
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert isinstance(done, ModelDone)
    return "".join(d.text for d in deltas if isinstance(d, TextDelta)), done


async def test_text_streams_as_deltas_then_done_with_usage(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["Set ", "DAVELOPER_REDIS_URL", "."], prompt_tokens=42, completion_tokens=5))
    events = await collect(model)
    assert events[:-1] == [TextDelta("Set "), TextDelta("DAVELOPER_REDIS_URL"), TextDelta(".")]
    assert events[-1] == ModelDone(finish_reason="stop", prompt_tokens=42, completion_tokens=5)
    (request,) = server.requests
    assert request["model"] == "test-chat"
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert "tools" not in request
    assert "max_tokens" not in request
    assert "temperature" not in request


async def test_a_tool_call_with_arguments_in_pieces(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(tool_calls=[ScriptedCall("search_documents", ['{"qu', 'ery": "re', 'dis"}'], "call_a")]))
    text, done = split(await collect(model, tools=[SEARCH]))
    assert text == ""
    assert done.finish_reason == "tool_calls"
    assert done.tool_calls == (ToolCallRequest("call_a", "search_documents", '{"query": "redis"}'),)


async def test_parallel_tool_calls_keep_their_order(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["Let me look."], tool_calls=[
        ScriptedCall("search_documents", ['{"query":', ' "a"}']),
        ScriptedCall("github_repo", ['{"repository": ', '"o/r"}']),
    ]))
    text, done = split(await collect(model, tools=[SEARCH]))
    assert text == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("search_documents", {"query": "a"}), ("github_repo", {"repository": "o/r"})]
    assert [c.call_id for c in done.tool_calls] == ["call_1", "call_2"]


async def test_the_request_carries_the_conversation_and_tools(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    call = ToolCallRequest("call_9", "search_documents", '{"query": "redis"}')
    messages = [*QUESTION, Message("assistant", "", tool_calls=(call,)),
                Message("tool", "[1] guide.md\nUse Redis.", tool_call_id="call_9", name="search_documents")]
    await collect(model, messages, tools=[SEARCH], model="other-model", temperature=0.2, max_tokens=100,
                  session_id="s-1")
    (request,) = server.requests
    assert request["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "How do I configure Redis?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "search_documents", "arguments": '{"query": "redis"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "[1] guide.md\nUse Redis."},
    ]
    assert request["tools"] == [{"type": "function", "function": {
        "name": "search_documents", "description": SEARCH.description, "parameters": SEARCH.parameters}}]
    # The session id goes as a keyed pseudonym, never as itself.
    assert (request["model"], request["temperature"], request["max_tokens"], request["user"]) == (
        "other-model", 0.2, 100, model.redactor.pseudonym("s-1"))
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_a_bad_key_is_a_failed_precondition(server: FakeOpenAI) -> None:
    chat = OpenAIChatModel(base_url=server.url, api_key="sk-wrong", default_model="m", max_retries=2)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await collect(chat)
    finally:
        await chat.aclose()
    assert caught.value.reason == "LLM_AUTH_FAILED"
    assert len(server.requests) == 1  # never retried


async def test_a_429_is_retried_by_the_sdk(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(status=429, retry_after=0.01), Script(text=["ok"]))
    text, _ = split(await collect(model))
    assert text == "ok"
    assert len(server.requests) == 2


async def test_429_forever_is_resource_exhausted_with_the_servers_delay(server: FakeOpenAI,
                                                                       model: OpenAIChatModel) -> None:
    server.fallback = Script(status=429, retry_after=0.02, message="slow down")
    with pytest.raises(ResourceExhausted) as caught:
        await collect(model)
    assert caught.value.reason == "LLM_RATE_LIMITED"
    assert caught.value.retry_after == pytest.approx(0.02)
    assert "slow down" in caught.value.message
    assert len(server.requests) == 3  # max_retries=2


async def test_500_forever_is_unavailable(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.fallback = Script(status=500, retry_after=0.01)
    with pytest.raises(Unavailable) as caught:
        await collect(model)
    assert caught.value.reason == "LLM_UNAVAILABLE"
    assert len(server.requests) == 3


async def test_400_is_invalid_argument_with_a_truncated_message(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(status=400, message="context too long: " + "x" * 5000))
    with pytest.raises(InvalidArgument) as caught:
        await collect(model)
    assert caught.value.reason == "LLM_REQUEST_REJECTED"
    assert "context too long" in caught.value.message
    assert len(caught.value.message) < 500


async def test_an_error_inside_the_stream_is_unavailable(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["partial"], stream_error="overloaded"))
    events: list[ModelEvent] = []

    async def consume() -> None:
        async for event in model.stream(QUESTION):
            events.append(event)

    with pytest.raises(Unavailable) as caught:
        await consume()
    assert events == [TextDelta("partial")]
    assert "overloaded" in caught.value.message


async def test_unreachable_endpoint_is_unavailable() -> None:
    chat = OpenAIChatModel(base_url="http://127.0.0.1:1/v1", api_key=None, default_model="m", max_retries=0)
    try:
        with pytest.raises(Unavailable):
            await collect(chat)
    finally:
        await chat.aclose()


async def test_closing_the_stream_closes_the_upstream_request(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["one", "two"], stall=True))
    events = model.stream(QUESTION)
    assert await anext(events) == TextDelta("one")
    started = time.monotonic()
    await events.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(server.disconnected.wait(), 2)
    assert time.monotonic() - started < 2
    assert server.completed == 0


async def test_cancelling_the_consumer_closes_the_upstream_request(server: FakeOpenAI,
                                                                  model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["one", "two"], stall=True))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in model.stream(QUESTION):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the cancellation is not swallowed
    await asyncio.wait_for(server.disconnected.wait(), 2)
    assert server.completed == 0


async def test_the_model_works_again_after_a_cancel(server: FakeOpenAI, model: OpenAIChatModel) -> None:
    server.enqueue(Script(text=["a"], stall=True), Script(text=["b"]))
    events = model.stream(QUESTION)
    await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    text, _ = split(await collect(model))
    assert text == "b"


async def test_make_chat_model_by_name(server: FakeOpenAI) -> None:
    assert isinstance(make_chat_model("offline", base_url=None, api_key=None, model=""), OfflineChatModel)
    chat = make_chat_model("openai", base_url=server.url, api_key="sk-test", model="test-chat")
    assert isinstance(chat, OpenAIChatModel)
    assert chat.name == "openai"
    try:
        text, _ = split(await collect(chat))
    finally:
        await chat.aclose()
    assert text == "Hello from the fake."
    with pytest.raises(ConfigError):
        make_chat_model("llama", base_url=None, api_key=None, model="x")
    with pytest.raises(ConfigError):
        make_chat_model("openai", base_url=None, api_key=None, model="")


async def test_sse_events_split_across_reads_with_crlf_comments_and_multiline_data() -> None:
    raw = (b': keep-alive\r\n\r\ndata: {"a":\r\ndata:  1}\r\n\r\n'
           b'event: x\ndata: [DONE]\n\ndata: last-without-blank-line')

    async def reads() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 7):  # boundaries inside lines, inside "\r\n"
            yield raw[i:i + 7]

    response = httpx2.Response(200, content=reads(), request=httpx2.Request("POST", "http://llm.invalid/"))
    assert [d async for d in _sse_data(response)] == [b'{"a":\n 1}', b"[DONE]", b"last-without-blank-line"]
