"""The sweeper: an expired session leaves no key in Redis and no point in Qdrant; each is swept once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel

from daveloper.agent.conversations import Conversations
from daveloper.app import App
from daveloper.config import Settings
from daveloper.documents.ingest import ingestion_scope
from daveloper.scraper.job_store import JobStore
from daveloper.scraper.jobs import job_scope
from daveloper.servicers.agent import purge_conversations
from daveloper.servicers.vector import delete_session_vectors, session_collection_prefix
from daveloper.sessions import SessionStore, TokenSigner
from daveloper.sweeper import Sweeper
from daveloper.vectors import PointId, VectorEngine
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatRequest,
    Collection,
    CreateCollectionRequest,
    CreateSessionRequest,
    DocumentServiceStub,
    GetSessionRequest,
    JobState,
    ListCollectionsRequest,
    ListDocumentsRequest,
    Point,
    ScraperServiceStub,
    ScrapeSpec,
    SendMessage,
    SessionServiceStub,
    StartScrapeRequest,
    UploadHeader,
    UploadRequest,
    UpsertPointsRequest,
    VectorServiceStub,
    WatchJobRequest,
)
from generated.google.protobuf import Struct
from tests.grpc_helpers import bearer
from tests.scraper.site import Site, serve_site

pytestmark = pytest.mark.timeout(60)

IDLE_SECONDS = 4  # long enough that a loaded machine does not expire A while it is still being given data
GUIDE = b"# Guide\n\nSet DAVELOPER_REDIS_URL to point the service at Redis.\n"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with serve_site(Site(sections=1, pages=2)) as running:
        yield running


@pytest.fixture
def settings(settings: Settings, site: Site) -> Settings:
    return settings.replace(session_idle_ttl_seconds=IDLE_SECONDS, scrape_allow=(f"127.0.0.1:{site.port}",),
                            scrape_timeout_seconds=2.0)


def sweeper_for(app: App) -> Sweeper:
    """A sweeper built from the app's parts, with the purgers ``DeleteSession`` uses (as app.py wires it)."""
    conversations = Conversations(app.redis)

    async def purge_chats(session_id: str) -> None:
        await purge_conversations(conversations, app.events, session_id)

    async def purge_vectors(session_id: str) -> None:
        await delete_session_vectors(app.qdrant, session_id, app.chunk_store)

    async def purge_event_logs(session_id: str) -> None:
        for job_id in await jobs.job_ids(session_id):
            await app.events.delete(job_scope(job_id))
        for ingestion_id in await app.catalog.ingestion_ids(session_id):
            await app.events.delete(ingestion_scope(ingestion_id))

    jobs = JobStore(app.redis)
    purgers = [purge_chats, purge_event_logs, app.catalog.purge_session, purge_vectors, jobs.purge_session]
    return Sweeper(app.redis, app.sessions, purgers, app.settings.sweep_interval_seconds)


async def create(channel: Channel) -> tuple[str, str]:
    created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
    return created.session.id, created.token


async def give_data(channel: Channel, token: str, site: Site | None) -> list[str]:
    """Documents, vectors and (given a site) a chat and a scrape job; the ids they got."""
    ids = []
    upload = [UploadRequest(header=UploadHeader(file_name="guide.md")), UploadRequest(chunk=GUIDE)]
    events = [r.event async for r in DocumentServiceStub(channel).upload(upload, timeout=30, metadata=bearer(token))]
    assert events[-1].stored is not None
    ids += [events[-1].ingestion_id, events[-1].stored.id]
    vectors = VectorServiceStub(channel)
    await vectors.create_collection(CreateCollectionRequest(collection=Collection(name="notes", dimension=2)),
                                    timeout=5, metadata=bearer(token))
    await vectors.upsert_points(UpsertPointsRequest(collection="notes", points=[
        Point(id="1", dense=[1.0, 0.0], payload=Struct.from_dict({"text": "hello"}))]), timeout=5,
        metadata=bearer(token))
    if site is None:
        return ids
    chat = [ChatRequest(send=SendMessage(conversation_id="conv-of-a", text="How do I point it at Redis?"))]
    turn = [r.event async for r in AgentServiceStub(channel).chat(chat, timeout=30, metadata=bearer(token))]
    assert turn[-1].turn_completed is not None
    ids += ["conv-of-a", turn[-1].turn_id]
    scraper = ScraperServiceStub(channel)
    job = (await scraper.start_scrape(StartScrapeRequest(spec=ScrapeSpec(urls=[site.url("/")], max_depth=1,
                                                                         max_pages=3, ingest=True)),
                                      timeout=10, metadata=bearer(token))).job
    assert job is not None
    async for response in scraper.watch_job(WatchJobRequest(job_id=job.id), timeout=30, metadata=bearer(token)):
        if response.event.finished is not None:
            assert response.event.finished.state is JobState.SUCCEEDED
    return [*ids, job.id]


async def redis_traces(redis: aioredis.Redis, needles: list[str]) -> list[str]:
    """Keys whose name, or whose string/hash/set value, mentions a needle (the audit stream excepted)."""
    found = []
    async for raw in redis.scan_iter(count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if any(n in key for n in needles):
            found.append(key)
            continue
        kind = (await redis.type(key)).decode()
        values: list[Any]
        if kind == "string":
            values = [await redis.get(key) or b""]
        elif kind == "hash":
            values = [*(await redis.hgetall(key)).values()]
        elif kind == "zset":
            values = await redis.zrange(key, 0, -1)
        elif kind == "set":
            values = [*await redis.smembers(key)]
        else:  # streams: dv:audit (kept by design, see the report) and event logs (named by scope ids)
            continue
        if any(n in (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for v in values for n in needles):
            found.append(f"{key} (value)")
    return found


async def qdrant_traces(qdrant: VectorEngine, session_id: str) -> list[str]:
    """Collections of the session, and points in any collection whose payload names the session."""
    found = []
    prefix = session_collection_prefix(session_id)
    for name in await qdrant.list_collections():
        if name.startswith(prefix):
            found.append(name)
            continue
        offset: PointId | None = None
        while True:
            points, offset = await qdrant.scroll(name, limit=256, offset=offset)
            found += [f"{name}/{p.id}" for p in points if session_id in str(p.payload)]
            if offset is None:
                break
    return found


async def test_the_sweeper_leaves_no_key_or_point_of_an_expired_session(app: App, channel: Channel,
                                                                        site: Site) -> None:
    # The document workers start first: their start-up (seconds on a loaded machine) is not idle time of A's.
    app.documents_pool.start()
    await app.documents_pool.ready()
    a_id, a_token = await create(channel)
    a_ids = await give_data(channel, a_token, site)
    b_id, b_token = await create(channel)
    await give_data(channel, b_token, None)
    sessions = SessionServiceStub(channel)

    # Real time passes: A is left idle past its idle TTL while B keeps calling.
    deadline = time.monotonic() + IDLE_SECONDS * 4
    while await app.redis.exists(app.sessions.record_key(a_id)):
        assert time.monotonic() < deadline, "A's record outlived its idle deadline"
        await sessions.get_session(GetSessionRequest(), timeout=5, metadata=bearer(b_token))
        await asyncio.sleep(0.25)
    assert await qdrant_traces(app.qdrant, a_id), "A had no Qdrant data to sweep: the test would prove nothing"
    assert await redis_traces(app.redis, [a_id])

    assert await sweeper_for(app).sweep_once() == 1

    assert await redis_traces(app.redis, [a_id, *a_ids]) == []
    assert await qdrant_traces(app.qdrant, a_id) == []
    assert await app.redis.zscore(app.sessions.index_key, a_id) is None
    # B is intact.
    got = await sessions.get_session(GetSessionRequest(), timeout=5, metadata=bearer(b_token))
    assert got.session.id == b_id
    listed = await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                               metadata=bearer(b_token))
    assert len(listed.documents) == 1
    collections = await VectorServiceStub(channel).list_collections(ListCollectionsRequest(), timeout=5,
                                                                    metadata=bearer(b_token))
    assert [(c.name, c.point_count) for c in collections.collections] == [("notes", 1)]
    assert await app.chunk_store.count(b_id) > 0
    assert await sweeper_for(app).sweep_once() == 0


async def test_each_expired_session_is_swept_exactly_once_across_instances(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, TokenSigner(b"k"), idle_ttl_seconds=1)
    ids = [(await store.create(3600, {}))[0].id for _ in range(30)]
    live, _ = await store.create(3600, {})
    await redis.zadd(store.index_key, {live.id: time.time() + 3600}, xx=True)
    for session_id in ids:  # expired: the record is gone and the deadline has passed
        await redis.delete(store.record_key(session_id))
        await redis.zadd(store.index_key, {session_id: time.time() - 1}, xx=True)
    purged: list[str] = []

    async def record(session_id: str) -> None:
        purged.append(session_id)
        await asyncio.sleep(0)  # let the other sweepers interleave

    purgers: list[Callable[[str], Awaitable[object]]] = [record]
    sweepers = [Sweeper(redis, store, purgers, 1.0, batch=7) for _ in range(4)]

    async def drain(sweeper: Sweeper) -> int:
        total = 0
        while swept := await sweeper.sweep_once():
            total += swept
        return total

    counts = await asyncio.gather(*(drain(s) for s in sweepers))
    assert sum(counts) == len(ids)
    assert sorted(purged) == sorted(ids)
    assert await redis.zrange(store.index_key, 0, -1) == [live.id.encode()]


async def test_a_session_whose_record_still_exists_is_not_swept(redis: aioredis.Redis) -> None:
    """Redis's clock decides: a sweeper whose clock runs ahead does not purge a live session."""
    store = SessionStore(redis, TokenSigner(b"k"))
    record, _ = await store.create(3600, {})
    await redis.zadd(store.index_key, {record.id: time.time() - 1}, xx=True)
    purged: list[str] = []

    async def note(session_id: str) -> None:
        purged.append(session_id)

    assert await Sweeper(redis, store, [note], 1.0).sweep_once() == 0
    assert purged == []
    assert await redis.exists(store.record_key(record.id))
