"""Work whose owner is alive but which makes no progress is stopped and fails ``NO_PROGRESS``, on a real app.

The owner keeps renewing its leases (so the lost-owner reaper of tests/test_ownership.py never
sees the work); what stalls is the work itself: a model stream that stops after its first words,
a page that never answers, a client that stops sending an upload's bytes. Stream heartbeats keep
flowing meanwhile and must not count as progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.app import App
from daveloper.config import Settings
from daveloper.keys import Keys
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatRequest,
    GetConversationRequest,
    IngestEvent,
    JobState,
    ScrapeRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SendMessage,
    TurnState,
    UploadHeader,
    UploadRequest,
    UploadResponse,
)
from tests.agent.openai_server import FakeOpenAI, Script
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


class Hanging:
    """A web server whose ``/hang`` never answers; ``closed`` is set when a client gives up on it."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.port = 0

    async def _hang(self, request: web.Request) -> web.Response:
        try:
            await asyncio.Event().wait()
        finally:
            self.closed.set()
        raise AssertionError("unreachable")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def site() -> AsyncIterator[Hanging]:
    hanging = Hanging()
    app = web.Application()
    app.router.add_get("/hang", hanging._hang)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)  # a client that leaves cancels it
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    hanging.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield hanging
    finally:
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings, llm: FakeOpenAI, site: Hanging) -> Settings:
    # Checked every lease_seconds / 3 = 0.2 s; heartbeats every 0.2 s, far more often than the bound.
    return settings.replace(lease_seconds=0.6, stall_seconds=1.0, heartbeat_seconds=0.2,
                            llm_base_url=llm.url, llm_api_key="sk-test", llm_model="fake-model",
                            scrape_allow=(f"127.0.0.1:{site.port}",), scrape_timeout_seconds=50.0)


def stalled(app: App, kind: str) -> float:
    return app.metrics.registry.get_sample_value("daveloper_work_stalled_total", {"kind": kind}) or 0


async def test_a_turn_whose_model_stream_stalls_fails_with_its_text_and_closes_the_stream(
    app: App, channel: Channel, token: str, llm: FakeOpenAI, redis: aioredis.Redis
) -> None:
    before = stalled(app, "turn")
    llm.enqueue(Script(text=["Half ", "an answer"], stall=True))
    agent = AgentServiceStub(channel)
    responses = [r async for r in agent.chat([ChatRequest(send=SendMessage(conversation_id="c", text="hi"))],
                                             timeout=30, metadata=bearer(token))]
    assert any(r.heartbeat is not None for r in responses)  # the stream stayed alive while the turn stalled
    failed = responses[-1].event.turn_failed if responses[-1].event is not None else None
    assert failed is not None, responses[-1]
    assert failed.failure is not None
    assert (failed.failure.code, failed.failure.reason) == (Status.UNAVAILABLE.value, "NO_PROGRESS")
    assert failed.partial_text == "Half an answer"
    await asyncio.wait_for(llm.disconnected.wait(), 5)  # the upstream request was closed
    (turn,) = (await agent.get_conversation(GetConversationRequest(conversation_id="c"),
                                            metadata=bearer(token))).turns
    assert turn.state is TurnState.FAILED
    assert turn.failure is not None
    assert turn.failure.reason == "NO_PROGRESS"
    assert stalled(app, "turn") == before + 1
    assert await redis.zcard(Keys().work) == 0  # its lease was released with its end


async def test_a_job_whose_page_never_answers_fails_and_closes_the_fetch(app: App, channel: Channel, token: str,
                                                                         site: Hanging) -> None:
    before = stalled(app, "job")
    spec = ScrapeSpec(urls=[site.url("/hang")], max_depth=0, max_pages=1)
    events = [r.event async for r in ScraperServiceStub(channel).scrape(ScrapeRequest(spec=spec), timeout=30,
                                                                           metadata=bearer(token))
              if r.event is not None]
    finished = events[-1].finished
    assert finished is not None
    assert finished.state is JobState.FAILED
    assert finished.failure is not None
    assert finished.failure.reason == "NO_PROGRESS"
    await asyncio.wait_for(site.closed.wait(), 5)
    assert stalled(app, "job") == before + 1


async def test_an_upload_whose_bytes_stop_coming_fails(app: App, channel: Channel, token: str) -> None:
    before = stalled(app, "ingestion")
    events: list[IngestEvent] = []

    async def upload() -> None:
        stream: Stream[UploadRequest, UploadResponse]
        async with channel.request("/daveloper.v1.DocumentService/Upload", Cardinality.STREAM_STREAM,
                                   UploadRequest, UploadResponse, timeout=30, metadata=bearer(token)) as stream:
            await stream.send_message(UploadRequest(header=UploadHeader(file_name="stuck.md")))
            await stream.send_message(UploadRequest(chunk=b"# Stuck\n\nThe rest never comes.\n"))
            async for response in stream:  # heartbeats meanwhile; the client never ends its side
                if response.event is not None:
                    events.append(response.event)

    with pytest.raises(GRPCError) as refused:
        await upload()
    assert refused.value.status is Status.UNAVAILABLE
    assert events[-1].failed is not None
    assert events[-1].failed.reason == "NO_PROGRESS"
    assert stalled(app, "ingestion") == before + 1
