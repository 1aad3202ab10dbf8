"""AgentService end to end over real gRPC, with the offline provider and the real event log."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.app import App
from generated.daveloper.v1 import (
    AgentServiceStub,
    CancelTurnRequest,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    DeleteConversationRequest,
    DocumentServiceStub,
    FinishReason,
    GetConversationRequest,
    ListConversationsRequest,
    SendMessage,
    SessionServiceStub,
    TurnState,
    UploadHeader,
    UploadRequest,
    WatchRequest,
    WatchResponse,
)
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(60)

GUIDE = b"""# Operations guide

## Redis

Set the DAVELOPER_REDIS_URL variable to point the service at an external Redis server.
Without it, an embedded Valkey starts under the data directory.

## Drain

On SIGTERM the server stops accepting calls and lets running streams finish for DAVELOPER_DRAIN_SECONDS.
"""



async def new_token(channel: Channel) -> str:
    return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token


async def upload_guide(channel: Channel, token: str) -> None:
    messages = [UploadRequest(header=UploadHeader(file_name="ops.md")), UploadRequest(chunk=GUIDE)]
    events = [r.event async for r in DocumentServiceStub(channel).upload(messages, timeout=30,
                                                                          metadata=bearer(token))]
    assert events[-1].stored is not None


async def chat(channel: Channel, token: str, *sends: SendMessage) -> list[ChatEvent]:
    requests = [ChatRequest(send=s) for s in sends]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]


def kinds(events: list[ChatEvent]) -> list[str]:
    names = ["turn_started", "token_delta", "tool_call", "tool_result", "citation", "turn_completed", "turn_failed"]
    return [next(n for n in names if getattr(e, n) is not None) for e in events]



async def test_offline_turn_answers_from_documents_with_citations(channel: Channel, token: str) -> None:
    await upload_guide(channel, token)
    events = await chat(channel, token, SendMessage(conversation_id="c1", text="How do I point it at my Redis server?"))
    order = kinds(events)
    assert order[0] == "turn_started"
    assert order[-1] == "turn_completed"
    # Citations follow the answer: one per passage its [n] markers name, not one per search hit.
    assert order.index("tool_call") < order.index("tool_result") < order.index("token_delta") < order.index("citation")
    assert order.index("citation") > max(i for i, kind in enumerate(order) if kind == "token_delta")
    call = next(e.tool_call for e in events if e.tool_call is not None)
    assert call.name == "search_documents"
    citation = next(e.citation for e in events if e.citation is not None)
    assert citation.index == 1
    assert citation.location.heading_path[-1] == "Redis"
    completed = events[-1].turn_completed
    text = "".join(e.token_delta.text for e in events if e.token_delta is not None)
    assert text == completed.text
    assert "DAVELOPER_REDIS_URL" in text
    assert "[1]" in text
    assert completed.finish_reason is FinishReason.STOP
    assert [e.seq for e in events] == sorted({e.seq for e in events})

    got = await AgentServiceStub(channel).get_conversation(GetConversationRequest(conversation_id="c1"),
                                                           timeout=5, metadata=bearer(token))
    (turn,) = got.turns
    assert (turn.state, turn.assistant_text) == (TurnState.COMPLETED, text)
    assert turn.citations[0].document_id == citation.document_id
    assert got.conversation.last_seq == events[-1].seq


async def test_with_no_documents_it_says_it_found_nothing(channel: Channel, token: str) -> None:
    events = await chat(channel, token, SendMessage(text="What is the drain timeout?"))
    text = events[-1].turn_completed.text
    assert "nothing" in text.lower() or "no " in text.lower()
    assert not any(e.citation is not None for e in events)


async def test_watch_replays_a_turn_exactly(channel: Channel, token: str) -> None:
    await upload_guide(channel, token)
    events = await chat(channel, token, SendMessage(conversation_id="c2", text="What happens on SIGTERM?"))
    middle = events[len(events) // 2].seq
    replay: list[ChatEvent] = []
    async with channel.request(  # a raw stream, so the test can stop reading at will
        "/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest, WatchResponse,
        timeout=10, metadata=bearer(token),
    ) as stream:
        await stream.send_message(WatchRequest(conversation_id="c2", after_seq=middle), end=True)
        while len(replay) < len(events) - len(events) // 2 - 1:
            replay.append((await stream.recv_message()).event)
        await stream.cancel()
    assert [e.seq for e in replay] == [e.seq for e in events if e.seq > middle]


async def test_same_client_message_id_returns_the_original_turn(channel: Channel, token: str) -> None:
    first = await chat(channel, token, SendMessage(conversation_id="c3", text="hello", client_message_id="m-1"))
    again = await chat(channel, token, SendMessage(conversation_id="c3", text="hello", client_message_id="m-1"))
    assert {e.turn_id for e in again} == {first[0].turn_id}
    got = await AgentServiceStub(channel).get_conversation(GetConversationRequest(conversation_id="c3"),
                                                           timeout=5, metadata=bearer(token))
    assert len(got.turns) == 1


async def test_cancel_of_a_finished_turn_is_a_clear_no_op(channel: Channel, token: str) -> None:
    events = await chat(channel, token, SendMessage(conversation_id="c4", text="hi"))
    answer = await AgentServiceStub(channel).cancel_turn(
        CancelTurnRequest(conversation_id="c4", turn_id=events[0].turn_id), timeout=5, metadata=bearer(token))
    assert answer.cancelled is False


@pytest.mark.parametrize(
    ("send", "field"),
    [
        (SendMessage(text=""), "send.text"),
        (SendMessage(text="x" * 40_000), "send.text"),
        (SendMessage(text="hi", conversation_id="bad id!"), "send.conversation_id"),
    ],
)
async def test_bad_messages_are_invalid_argument(channel: Channel, token: str, send: SendMessage, field: str) -> None:
    with pytest.raises(GRPCError) as caught:
        await chat(channel, token, send)
    assert caught.value.status is Status.INVALID_ARGUMENT
    bad = next(d for d in caught.value.details if isinstance(d, error_details_pb2.BadRequest))
    assert bad.field_violations[0].field == field


async def test_another_session_cannot_touch_a_conversation(channel: Channel, token: str) -> None:
    events = await chat(channel, token, SendMessage(conversation_id="mine", text="hi"))
    other = await new_token(channel)
    stub = AgentServiceStub(channel)
    attempts: list[Any] = [
        stub.get_conversation(GetConversationRequest(conversation_id="mine"), timeout=5, metadata=bearer(other)),
        stub.delete_conversation(DeleteConversationRequest(conversation_id="mine"), timeout=5,
                                 metadata=bearer(other)),
        stub.cancel_turn(CancelTurnRequest(conversation_id="mine", turn_id=events[0].turn_id), timeout=5,
                         metadata=bearer(other)),
    ]
    for attempt in attempts:
        with pytest.raises(GRPCError) as caught:
            await attempt
        assert caught.value.status is Status.NOT_FOUND
    # Watch names a conversation of the caller's own: "mine" is an empty one for the other session, which waits.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            _ = [r async for r in stub.watch(WatchRequest(conversation_id="mine"), timeout=5, metadata=bearer(other))]
    listed = await stub.list_conversations(ListConversationsRequest(), timeout=5, metadata=bearer(other))
    assert listed.conversations == []
    mine = await stub.list_conversations(ListConversationsRequest(), timeout=5, metadata=bearer(token))
    assert [c.id for c in mine.conversations] == ["mine"]


async def test_delete_conversation_removes_history_and_log(channel: Channel, token: str) -> None:
    await chat(channel, token, SendMessage(conversation_id="gone", text="hi"))
    stub = AgentServiceStub(channel)
    await stub.delete_conversation(DeleteConversationRequest(conversation_id="gone"), timeout=5,
                                   metadata=bearer(token))
    with pytest.raises(GRPCError) as caught:
        await stub.get_conversation(GetConversationRequest(conversation_id="gone"), timeout=5, metadata=bearer(token))
    assert reason(caught.value) == "CONVERSATION_NOT_FOUND"


async def test_many_concurrent_watchers_all_get_the_live_tail(app: App, channel: Channel, token: str) -> None:
    """Each live reader holds a Redis connection; more readers than redis-py's default pool (100) must work."""
    first = await chat(channel, token, SendMessage(conversation_id="crowd", text="hi"))
    last = first[-1].seq
    # Spread over connections: an HTTP/2 connection carries a bounded number of streams at once.
    channels = [Channel(app.grpc_addr.host, app.grpc_addr.port) for _ in range(5)]

    async def watcher(channel: Channel) -> ChatEvent:
        async with channel.request("/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest,
                                   WatchResponse, timeout=30, metadata=bearer(token)) as stream:
            await stream.send_message(WatchRequest(conversation_id="crowd", after_seq=last), end=True)
            event = (await stream.recv_message()).event
            await stream.cancel()
            return event

    try:
        watchers = [asyncio.create_task(watcher(channels[i % 5])) for i in range(150)]
        await asyncio.sleep(0.5)  # let every watcher reach the live tail
        second = await chat(channel, token, SendMessage(conversation_id="crowd", text="again"))
        seen = await asyncio.gather(*watchers)
    finally:
        for extra in channels:
            extra.close()
    assert {e.seq for e in seen} == {last + 1}
    assert {e.turn_id for e in seen} == {second[0].turn_id}


async def test_a_long_lived_chat_stream_does_not_keep_its_finished_turns(channel: Channel, token: str) -> None:
    def forwarders() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Task)
                   and o.get_coro().__qualname__.endswith(".forward"))  # type: ignore[union-attr]

    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=60, metadata=bearer(token)) as stream:
        for n in range(12):
            await stream.send_message(ChatRequest(send=SendMessage(conversation_id="long", text=f"question {n}")))
            while True:
                response = await stream.recv_message()
                assert response is not None
                assert response.event is not None
                if response.event.turn_completed is not None:
                    break
        await asyncio.sleep(0.05)
        assert forwarders() <= 1  # 12 turns on one stream, their forwarders gone as each ended
        await stream.end()
        async for _ in stream:
            pass
