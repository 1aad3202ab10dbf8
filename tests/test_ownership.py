"""Work whose instance stopped renewing its lease is finished by a live instance, over the real RPCs.

The lost instance is played by a :class:`WorkLeases` that claims work and never
renews it; the records it leaves are the ones a real instance writes when it
starts a turn, a job or an upload. (tests/test_scaleout.py kills a real process.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel

from daveloper.agent.conversations import Conversations, now
from daveloper.agent.turns import conversation_scope
from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.documents.ingest import ingestion_scope
from daveloper.keys import Keys
from daveloper.ownership import WorkLeases
from daveloper.scraper.job_store import JobStore
from daveloper.scraper.jobs import job_scope
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    Conversation,
    DocumentServiceStub,
    GetConversationRequest,
    GetJobRequest,
    GetSessionRequest,
    IngestEvent,
    IngestStarted,
    Job,
    JobEvent,
    JobQueued,
    JobState,
    ScraperServiceStub,
    SessionServiceStub,
    TokenDelta,
    Turn,
    TurnStarted,
    TurnState,
    WatchIngestionRequest,
    WatchJobRequest,
    WatchRequest,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[App]:
    async with open_app(settings.replace(lease_seconds=0.6)) as running:
        yield running


@pytest.fixture
def lost(redis: aioredis.Redis) -> WorkLeases:
    """The leases of an instance that died: claimed, never renewed."""
    return WorkLeases(redis, owner="lost-instance", ttl_seconds=0.3)


async def session_id(channel: Channel, token: str) -> str:
    response = await SessionServiceStub(channel).get_session(GetSessionRequest(), metadata=bearer(token))
    assert response.session is not None
    return response.session.id


async def test_a_turn_of_a_lost_instance_fails_with_the_text_it_had_streamed(
    app: App, channel: Channel, token: str, redis: aioredis.Redis, lost: WorkLeases
) -> None:
    session = await session_id(channel, token)
    reaped = app.metrics.registry.get_sample_value("daveloper_work_reaped_total", {"kind": "turn"}) or 0
    turn = Turn(id="turn_lost", user_text="hello?", state=TurnState.RUNNING, create_time=now())
    conversations = Conversations(redis)
    await conversations.save(session, Conversation(id="c1", title="hello?", create_time=now(), update_time=now(),
                                                   turn_count=1))
    assert await conversations.add_turn(session, "c1", turn) is None
    scope = conversation_scope(session, "c1")
    start = await app.events.append(scope, bytes(ChatEvent(conversation_id="c1", turn_id=turn.id,
                                                           turn_started=TurnStarted(owner="lost-instance"))))
    for piece in ("Half ", "an ", "answer"):
        await app.events.append(scope, bytes(ChatEvent(conversation_id="c1", turn_id=turn.id,
                                                       token_delta=TokenDelta(text=piece))))
    await lost.claim("turn", turn.id, session=session, conversation="c1", seq=str(start))

    agent = AgentServiceStub(channel)
    async with asyncio.timeout(20):
        async for response in agent.watch(WatchRequest(conversation_id="c1"), metadata=bearer(token)):
            assert response.event is not None
            if response.event.turn_failed is not None:
                failed = response.event.turn_failed
                break
    assert failed.partial_text == "Half an answer"
    assert failed.failure is not None
    assert failed.failure.reason == "OWNER_LOST"
    assert failed.failure.metadata["owner"] == "lost-instance"
    stored = await agent.get_conversation(GetConversationRequest(conversation_id="c1"), metadata=bearer(token))
    (record,) = stored.turns
    assert record.state is TurnState.FAILED
    assert record.assistant_text == "Half an answer"
    # The lease is gone: nothing is reaped twice.
    assert await redis.zcard(Keys().work) == 0
    assert app.metrics.registry.get_sample_value("daveloper_work_reaped_total", {"kind": "turn"}) == reaped + 1


async def test_a_job_of_a_lost_instance_fails_and_frees_its_slot(
    app: App, channel: Channel, token: str, redis: aioredis.Redis, lost: WorkLeases
) -> None:
    session = await session_id(channel, token)
    store = JobStore(redis)
    job = Job(id="job_lost", state=JobState.RUNNING, create_time=now(), update_time=now())
    await store.acquire(session, job.id, 2)
    await store.save(session, job)
    await app.events.append(job_scope(job.id), bytes(JobEvent(job_id=job.id, queued=JobQueued(job=job))))
    await lost.claim("job", job.id, session=session)

    scraper = ScraperServiceStub(channel)
    async with asyncio.timeout(20):
        watched = [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id), metadata=bearer(token))]
    finished = watched[-1]
    assert finished is not None
    assert finished.finished is not None
    assert finished.finished.state is JobState.FAILED
    assert finished.finished.failure is not None
    assert finished.finished.failure.reason == "OWNER_LOST"
    got = await scraper.get_job(GetJobRequest(job_id=job.id), metadata=bearer(token))
    assert got.job is not None
    assert got.job.state is JobState.FAILED
    assert await store.leases.count(session) == 0


async def test_an_upload_of_a_lost_instance_fails_its_watchers(
    app: App, channel: Channel, token: str, redis: aioredis.Redis, lost: WorkLeases
) -> None:
    session = await session_id(channel, token)
    await app.catalog.start_ingestion("ing_lost", session, "notes.md")
    await app.events.append(ingestion_scope("ing_lost"), bytes(IngestEvent(
        ingestion_id="ing_lost", started=IngestStarted(file_name="notes.md"))))
    await lost.claim("ingestion", "ing_lost", session=session)

    docs = DocumentServiceStub(channel)
    async with asyncio.timeout(20):
        watched = [r.event async for r in docs.watch_ingestion(WatchIngestionRequest(ingestion_id="ing_lost"),
                                                               metadata=bearer(token))]
    failed = watched[-1]
    assert failed is not None
    assert failed.failed is not None
    assert failed.failed.reason == "OWNER_LOST"


async def test_live_work_is_renewed_and_only_lapsed_work_is_reaped(redis: aioredis.Redis) -> None:
    reaped: list[str] = []

    async def record(fields: object) -> None:
        assert isinstance(fields, dict)
        reaped.append(fields["id"])

    live = WorkLeases(redis, owner="live", ttl_seconds=0.3)
    dead = WorkLeases(redis, owner="dead", ttl_seconds=0.3)
    reaper = WorkLeases(redis, owner="reaper", ttl_seconds=0.3)
    reaper.on_orphan("turn", record)
    await live.claim("turn", "kept", session="s", conversation="c")
    await dead.claim("turn", "lost", session="s", conversation="c")
    await dead.claim("mystery", "unknown")  # a kind nobody handles is dropped with a warning
    for _ in range(4):
        await asyncio.sleep(0.15)
        await live.renew()
        await reaper.reap()
    assert reaped == ["lost"]
    assert live.owned == 1
    await live.release("turn", "kept")
    assert await redis.zcard(Keys().work) == 0
    assert await redis.hlen(Keys().work_data) == 0
