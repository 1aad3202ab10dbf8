"""Chaos, scaled down for CI: hundreds of clients leaving mid-turn, mid-upload and mid-crawl, and a Valkey restart.

Clients over gRPC and WebSocket leave chat turns; gRPC clients leave uploads (before
or after their last byte) and crawl jobs of a local site (watching, or cancelling).
Afterwards every turn, upload and job has ended (within the lease time + 10 s),
every conversation's, ingestion's and job's log holds each of its events once, in
seq order, with one end, last (each turn's text whole), no handler is left in
flight, no Valkey client is blocked, and no ERROR was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
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
    CancelJobRequest,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    DocumentServiceStub,
    GetConversationRequest,
    GetJobRequest,
    IngestEvent,
    JobEvent,
    JobState,
    ListDocumentsRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SendMessage,
    SessionServiceStub,
    StartScrapeRequest,
    TurnState,
    UploadHeader,
    UploadRequest,
    UploadResponse,
    WatchIngestionRequest,
    WatchJobRequest,
    WatchJobResponse,
    WatchRequest,
    WatchResponse,
)
from tests.agent.openai_server import FakeOpenAI, Script
from tests.edge.client import connect
from tests.grpc_helpers import bearer
from tests.scraper.site import Site, serve_site

pytestmark = pytest.mark.timeout(120)

GRPC_DROPS = 200
WS_DROPS = 40
UPLOAD_DROPS = 30
CRAWL_DROPS = 12
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
    #: Ingestions and jobs that were started (their id seen), with their session's token.
    ingestions: list[tuple[str, str]] = field(default_factory=list)
    jobs: list[tuple[str, str]] = field(default_factory=list)
    upload_drops: int = 0
    crawl_drops: int = 0

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
async def site() -> AsyncIterator[Site]:
    async with serve_site(Site(sections=4, pages=6, page_delay=0.02)) as running:
        yield running


@pytest.fixture
async def chaos_app(settings: Settings, valkey: EmbeddedValkey, llm: FakeOpenAI, site: Site) -> AsyncIterator[App]:
    settings = settings.replace(redis_url=valkey.url, llm_base_url=llm.url, llm_api_key="sk-test",
                                llm_model="fake-model", rate_chat_turns="100000/min", rate_calls="100000/min",
                                rate_uploads="100000/min", rate_scrapes="100000/min",
                                rate_sessions="1000/min", quota_concurrent_turns=1000, heartbeat_seconds=0.5,
                                scrape_allow=(f"127.0.0.1:{site.port}",), scrape_jobs_per_session=CRAWL_DROPS,
                                scrape_timeout_seconds=2.0)
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


async def upload_drop(channel: Channel, chaos: Chaos) -> None:
    """An Upload the client leaves: before its last byte (nothing may be stored) or while it is processed."""
    token = chaos.rng.choice(chaos.tokens)
    number = chaos.rng.getrandbits(32)
    data = (f"# Chaos note {number}\n\n" + f"Note {number} says the flux capacitor hums. " * 120).encode()
    stream: Stream[UploadRequest, UploadResponse]
    with contextlib.suppress(GRPCError, StreamTerminatedError, StreamClosedError, ConnectionError, TimeoutError):
        async with channel.request("/daveloper.v1.DocumentService/Upload", Cardinality.STREAM_STREAM, UploadRequest,
                                   UploadResponse, timeout=10, metadata=bearer(token)) as stream:
            await stream.send_message(UploadRequest(header=UploadHeader(file_name=f"note-{number}.md",
                                                                        size_bytes=len(data))))
            async with asyncio.timeout(5):
                while (first := await stream.recv_message()) is not None and first.event is None:
                    pass  # a heartbeat
            if first is None or first.event is None:
                return
            chaos.ingestions.append((token, first.event.ingestion_id))
            middle = chaos.rng.randrange(1, len(data))
            await stream.send_message(UploadRequest(chunk=data[:middle]))
            if chaos.rng.random() < 0.4:  # gone before the last byte
                await asyncio.sleep(chaos.rng.choice([0, 0.005, 0.02]))
            else:
                await stream.send_message(UploadRequest(chunk=data[middle:]), end=True)
                await read_for(stream, chaos.rng.choice([0, 0.01, 0.05, 0.2]))
            await stream.cancel()
    chaos.upload_drops += 1


async def crawl_drop(channel: Channel, chaos: Chaos, site: Site) -> None:
    """A crawl job of the local site; its watcher leaves after a moment, sometimes cancelling the job."""
    token = chaos.rng.choice(chaos.tokens)
    spec = ScrapeSpec(urls=[site.url(f"/section/{chaos.rng.randrange(4)}")], max_depth=1, max_pages=4,
                      ingest=chaos.rng.random() < 0.5)
    scraper = ScraperServiceStub(channel)
    stream: Stream[WatchJobRequest, WatchJobResponse]
    with contextlib.suppress(GRPCError, StreamTerminatedError, StreamClosedError, ConnectionError):
        job = (await scraper.start_scrape(StartScrapeRequest(spec=spec), timeout=5, metadata=bearer(token))).job
        assert job is not None
        chaos.jobs.append((token, job.id))
        async with channel.request("/daveloper.v1.ScraperService/WatchJob", Cardinality.UNARY_STREAM,
                                   WatchJobRequest, WatchJobResponse, timeout=10, metadata=bearer(token)) as stream:
            await stream.send_message(WatchJobRequest(job_id=job.id), end=True)
            await read_for(stream, chaos.rng.choice([0, 0.02, 0.1, 0.3]))
            await stream.cancel()
        if chaos.rng.random() < 0.3:
            await scraper.cancel_job(CancelJobRequest(job_id=job.id), timeout=5, metadata=bearer(token))
    chaos.crawl_drops += 1


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


async def restart(valkey: EmbeddedValkey, after: float, down: float, back: asyncio.Event) -> None:
    await asyncio.sleep(after)
    await valkey.stop()
    await asyncio.sleep(down)
    await valkey.start()
    back.set()


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


async def ended_ingestion(stub: DocumentServiceStub, token: str, ingestion_id: str) -> list[IngestEvent]:
    """An ingestion's whole log, read until its final event (retried while Redis comes back)."""
    while True:
        events: list[IngestEvent] = []
        try:
            async for response in stub.watch_ingestion(WatchIngestionRequest(ingestion_id=ingestion_id), timeout=20,
                                                       metadata=bearer(token)):
                if response.event is not None:
                    events.append(response.event)
            return events
        except GRPCError as exc:
            if exc.status is not Status.UNAVAILABLE:
                raise
            await asyncio.sleep(0.2)


async def ended_job(stub: ScraperServiceStub, token: str, job_id: str) -> list[JobEvent]:
    """A job's whole log, read until its ``finished`` event, once its record says it ended."""
    while True:
        events: list[JobEvent] = []
        try:
            async for response in stub.watch_job(WatchJobRequest(job_id=job_id), timeout=20, metadata=bearer(token)):
                if response.event is not None:
                    events.append(response.event)
            job = (await stub.get_job(GetJobRequest(job_id=job_id), timeout=5, metadata=bearer(token))).job
            assert job is not None
            assert job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED), job.state
            return events
        except GRPCError as exc:
            if exc.status is not Status.UNAVAILABLE:
                raise
            await asyncio.sleep(0.2)


def check_ingestion(events: list[IngestEvent]) -> None:
    """Seqs 1..n once each, from its start to one end (stored or failed), last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].started is not None
    ends = [e for e in events if e.stored is not None or e.failed is not None]
    assert ends == [events[-1]]


def check_job(events: list[JobEvent]) -> None:
    """Seqs 1..n once each, from queued to one ``finished``, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].queued is not None
    assert [e for e in events if e.finished is not None] == [events[-1]]


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
    chaos_app: App, valkey: EmbeddedValkey, site: Site, caplog: pytest.LogCaptureFixture
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

            back = asyncio.Event()

            async def paced(count: int, drop: Callable[[], Awaitable[None]]) -> None:
                # Spread over the run, not bunched where calls fail fast: the first half before and during
                # the restart, the second half once Valkey is back.
                for done in range(count):
                    if done == count // 2:
                        await back.wait()
                    await drop()
                    await asyncio.sleep(chaos.rng.uniform(0.05, 0.3))

            async with asyncio.TaskGroup() as group:
                group.create_task(restart(valkey, after=1.0, down=3.0, back=back))
                for _ in range(WORKERS):
                    group.create_task(worker())
                for _ in range(2):
                    group.create_task(paced(UPLOAD_DROPS // 2, lambda: upload_drop(channel, chaos)))
                group.create_task(paced(CRAWL_DROPS, lambda: crawl_drop(channel, chaos, site)))
            assert (chaos.drops, chaos.ws_drops, chaos.upload_drops + chaos.crawl_drops) == (
                GRPC_DROPS, WS_DROPS, UPLOAD_DROPS + CRAWL_DROPS)

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
                documents, scraper = DocumentServiceStub(channel), ScraperServiceStub(channel)
                failed: set[str] = set()
                for token, ingestion_id in chaos.ingestions:
                    ingestion = await ended_ingestion(documents, token, ingestion_id)
                    check_ingestion(ingestion)
                    if ingestion[-1].failed is not None:
                        failed.add(ingestion_id)
                for token in tokens:  # a failed upload stored nothing
                    listed = await documents.list_documents(ListDocumentsRequest(page_size=1000), timeout=5,
                                                            metadata=bearer(token))
                    assert failed.isdisjoint(d.ingestion_id for d in listed.documents)
                for token, job_id in chaos.jobs:
                    check_job(await ended_job(scraper, token, job_id))
            assert checked > len(tokens)
            assert len(chaos.ingestions) >= UPLOAD_DROPS // 3
            assert len(chaos.jobs) >= CRAWL_DROPS // 3
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
