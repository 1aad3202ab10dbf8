"""A turn's events reach the stream that started it in process; a stream that falls behind reads the log on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality

from daveloper.agent import feed as feed_module
from daveloper.agent.feed import TurnFeed
from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolSpec
from daveloper.app import App, open_app
from daveloper.config import Settings
from generated.daveloper.v1 import ChatEvent, ChatRequest, ChatResponse, SendMessage, WatchRequest, WatchResponse
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

PIECES = 40
PIECE = "x" * 4000  # 40 pieces of 4 kB: more than the client's HTTP/2 window (64 KiB) of events
SMALL_WINDOW = Configuration(http2_connection_window_size=2**16, http2_stream_window_size=2**16)


class BulkyModel:
    """Streams ``PIECES`` large text deltas, letting the loop run between them."""

    name = "bulky"

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), model: str = "",
                     temperature: float | None = None, max_tokens: int = 0,
                     session_id: str = "") -> AsyncGenerator[ModelEvent, None]:
        for _ in range(PIECES):
            yield TextDelta(PIECE)
            await asyncio.sleep(0.001)
        yield ModelDone("stop", prompt_tokens=1, completion_tokens=PIECES)


async def test_feed_gives_events_in_order_then_ends_after_what_it_holds() -> None:
    feed = TurnFeed()
    feed.push(7, [b"a", b"b"], ends_turn=False)
    feed.push(9, [b"c"], ends_turn=True)
    feed.close()
    got = [await feed.next() for _ in range(4)]
    assert [(item[0].seq, item[0].payload, item[1]) if item else None for item in got] == [
        (7, b"a", False), (8, b"b", False), (9, b"c", True), None]
    feed.push(10, [b"d"], ends_turn=False)  # closed: dropped
    assert await feed.next() is None


async def test_a_reader_that_falls_behind_gets_what_was_held_then_the_end() -> None:
    feed = TurnFeed()
    waiting = asyncio.create_task(feed.next())
    await asyncio.sleep(0)
    feed.push(1, [b"start"], ends_turn=False)
    assert await waiting is not None
    for seq in range(2, 2 + feed_module.MAX_PENDING):
        feed.push(seq, [b"t"], ends_turn=False)
    feed.push(2 + feed_module.MAX_PENDING, [b"one too many"], ends_turn=False)
    held = []
    while (item := await feed.next()) is not None:
        held.append(item[0].seq)
    assert held == list(range(2, 2 + feed_module.MAX_PENDING))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(coalesce_chars=1)  # every delta its own event, unless an append is in flight


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[App]:
    async with open_app(settings, chat_model=BulkyModel()) as running:
        yield running


async def test_a_chat_stream_that_stops_reading_still_gets_every_event_once(
        monkeypatch: pytest.MonkeyPatch, app: App, channel: Channel, token: str) -> None:
    # The client reads nothing until the turn has ended: the server's sends wait for HTTP/2 flow control
    # (a 64 KiB window), the turn's feed overflows (two events held are too many here), and the stream reads
    # the log from where the feed stopped.
    monkeypatch.setattr(feed_module, "MAX_PENDING", 1)
    slow = Channel(app.grpc_addr.host, app.grpc_addr.port, config=SMALL_WINDOW)
    chat: Stream[ChatRequest, ChatResponse]
    async with slow.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=30, metadata=bearer(token)) as chat:
        await chat.send_message(ChatRequest(send=SendMessage(conversation_id="bulky", text="go")), end=True)
        watch: Stream[WatchRequest, WatchResponse]
        async with channel.request("/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest,
                                   WatchResponse, timeout=30, metadata=bearer(token)) as watch:
            await watch.send_message(WatchRequest(conversation_id="bulky"), end=True)
            logged: list[ChatEvent] = []
            while not logged or logged[-1].turn_completed is None:
                response = await watch.recv_message()
                assert response is not None
                if response.event is not None:
                    logged.append(response.event)
            await watch.cancel()
        streamed: list[ChatEvent] = []
        while (response := await chat.recv_message()) is not None:
            if response.event is not None:
                streamed.append(response.event)
    slow.close()
    assert len(logged) > 3
    assert [bytes(e) for e in streamed] == [bytes(e) for e in logged]
    assert "".join(e.token_delta.text for e in streamed if e.token_delta) == PIECE * PIECES
