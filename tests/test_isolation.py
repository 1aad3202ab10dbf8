"""Isolation matrix: every RPC that takes an id, called by session B with session A's id, over gRPC and the edge.

The RPCs are enumerated from the descriptor pool (a request field, at most two
messages deep, named ``*_id``/``*_ids``, or a VectorService collection name),
so a new id-taking RPC fails :func:`test_every_id_taking_rpc_is_covered` until
it is added here. Lookups must answer NOT_FOUND. A few ids are not lookups;
each is an explicit exception below, with what is checked instead.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from google.protobuf.descriptor import Descriptor
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import generated.daveloper.v1 as v1
from daveloper.app import App
from daveloper.config import Settings
from daveloper.descriptors import load_descriptor_pool
from daveloper.edge import Edge, open_edge
from tests.edge.client import connect, status
from tests.grpc_helpers import bearer
from tests.scraper.site import Site, serve_site
from tests.test_sweeper import create

pytestmark = pytest.mark.timeout(60)

SERVICES = ("SessionService", "DocumentService", "AgentService", "ScraperService", "VectorService", "LogsService")
GUIDE = b"# Guide\n\nSet DAVELOPER_REDIS_URL to point the service at Redis.\n"


@dataclass
class Owned:
    """Session A and the ids of what it owns."""

    token: str
    ingestion_id: str
    document_id: str
    conversation_id: str
    turn_id: str
    job_id: str
    collection: str = "notes"


#: Lookups: method -> request JSON naming A's resource; B must get NOT_FOUND.
def lookups(a: Owned) -> dict[str, dict[str, Any]]:
    return {
        "DocumentService/WatchIngestion": {"ingestionId": a.ingestion_id},
        "DocumentService/CancelIngestion": {"ingestionId": a.ingestion_id},
        "DocumentService/GetDocument": {"documentId": a.document_id},
        "DocumentService/DeleteDocument": {"documentId": a.document_id},
        "AgentService/CancelTurn": {"conversationId": a.conversation_id, "turnId": a.turn_id},
        "AgentService/GetConversation": {"conversationId": a.conversation_id},
        "AgentService/DeleteConversation": {"conversationId": a.conversation_id},
        "ScraperService/WatchJob": {"jobId": a.job_id},
        "ScraperService/CancelJob": {"jobId": a.job_id},
        "ScraperService/GetJob": {"jobId": a.job_id},
        "VectorService/DeleteCollection": {"name": a.collection},
        "VectorService/UpsertPoints": {"collection": a.collection, "points": [{"id": "2", "dense": [0.0, 1.0]}]},
        "VectorService/QueryPoints": {"collection": a.collection, "dense": [1.0, 0.0]},
        "VectorService/DeletePoints": {"collection": a.collection, "ids": ["1"]},
    }


#: Ids that are not lookups, and what their tests below check instead.
EXCEPTIONS = {
    # Idempotency key of the uploader's own documents: B's upload with A's key stores B's own document.
    "DocumentService/Upload": "test_ids_that_are_not_lookups",
    # A filter on the caller's own documents: A's ids match nothing, so B gets no hits (not NOT_FOUND).
    "DocumentService/Search": "test_ids_that_are_not_lookups",
    # send.conversation_id creates on first use (B gets its own conversation of that id, A's is untouched);
    # send.options.document_ids filters like Search; cancel.* is a CancelTurn lookup (NOT_FOUND, checked).
    "AgentService/Chat": "test_ids_that_are_not_lookups",
    # Conversation logs live in the caller's namespace: A's id is an empty conversation of B's own,
    # which waits for its first event exactly like an id never used.
    "AgentService/Watch": "test_ids_that_are_not_lookups",
    # Names live in the caller's namespace: B creating A's collection name gets B's own collection.
    "VectorService/CreateCollection": "test_ids_that_are_not_lookups",
    # Admin only: any session gets PERMISSION_DENIED, whatever session_id it names.
    "LogsService/ListAuditEvents": "test_ids_that_are_not_lookups",
    # A filter on the caller's own live log records (a tail, not a lookup); its scoping is LogsService's test.
    "LogsService/Tail": "tests/servicers (LogsService)",
}


def _id_fields(message: Descriptor, service: str, depth: int = 0) -> list[str]:
    found = []
    for field in message.fields:
        named = service == "VectorService" and field.name in ("collection", "name")
        if field.name.endswith(("_id", "_ids")) or named:
            found.append(field.name)
        if field.message_type is not None and depth < 2 and field.message_type.full_name.startswith("daveloper."):
            found += [f"{field.name}.{name}" for name in _id_fields(field.message_type, service, depth + 1)]
    return found


def id_taking_methods() -> set[str]:
    pool = load_descriptor_pool()
    return {f"{name}/{method.name}" for name in SERVICES
            for method in pool.FindServiceByName(f"daveloper.v1.{name}").methods
            if _id_fields(method.input_type, name)}


def test_every_id_taking_rpc_is_covered() -> None:
    covered = set(lookups(Owned("", "", "", "", "", ""))) | set(EXCEPTIONS)
    assert id_taking_methods() == covered


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with serve_site(Site(sections=1, pages=2)) as running:
        yield running


@pytest.fixture
def settings(settings: Settings, site: Site) -> Settings:
    return settings.replace(scrape_allow=(f"127.0.0.1:{site.port}",), scrape_timeout_seconds=2.0)


@pytest.fixture
async def edge(app: App) -> AsyncIterator[Edge]:
    async with open_edge(app.settings, upstreams=[app.grpc_addr], health=app.health) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def upload(channel: Channel, token: str, data: bytes, client_id: str = "") -> v1.IngestEvent:
    messages = [v1.UploadRequest(header=v1.UploadHeader(file_name="guide.md", client_document_id=client_id)),
                v1.UploadRequest(chunk=data)]
    events = [r.event async for r in v1.DocumentServiceStub(channel).upload(messages, timeout=30,
                                                                            metadata=bearer(token))]
    assert events[-1].stored is not None
    return events[-1]


@pytest.fixture
async def owned(channel: Channel, site: Site) -> Owned:
    _, token = await create(channel)
    stored = await upload(channel, token, GUIDE, client_id="guide-a")
    assert stored.stored is not None
    chat = [v1.ChatRequest(send=v1.SendMessage(conversation_id="conv-a", text="How do I point it at Redis?"))]
    turn = [r.event async for r in v1.AgentServiceStub(channel).chat(chat, timeout=30, metadata=bearer(token))]
    vectors = v1.VectorServiceStub(channel)
    await vectors.create_collection(v1.CreateCollectionRequest(collection=v1.Collection(name="notes", dimension=2)),
                                    timeout=5, metadata=bearer(token))
    await vectors.upsert_points(v1.UpsertPointsRequest(collection="notes", points=[v1.Point(id="1", dense=[1.0, 0.0])]),
                                timeout=5, metadata=bearer(token))
    job = (await v1.ScraperServiceStub(channel).start_scrape(
        v1.StartScrapeRequest(spec=v1.ScrapeSpec(urls=[site.url("/")], max_depth=0, max_pages=1)),
        timeout=10, metadata=bearer(token))).job
    assert job is not None
    return Owned(token, stored.ingestion_id, stored.stored.id, "conv-a", turn[-1].turn_id, job.id)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def grpc_call(channel: Channel, method: str, body: dict[str, Any], token: str) -> list[Any]:
    """Call ``Service/Method`` with a JSON-shaped request through the generated stub; the responses."""
    service, name = method.split("/")
    descriptor = load_descriptor_pool().FindMethodByName(f"daveloper.v1.{service}.{name}")
    request = getattr(v1, descriptor.input_type.name).from_dict(body)
    call = getattr(getattr(v1, f"{service}Stub")(channel), _snake(name))
    if descriptor.server_streaming:
        return [r async for r in call(request, timeout=10, metadata=bearer(token))]
    return [await call(request, timeout=10, metadata=bearer(token))]


async def edge_status(http: aiohttp.ClientSession, edge: Edge, method: str, body: dict[str, Any],
                      token: str) -> str:
    """The Connect status code of an HTTP/JSON call (the NDJSON stream's final status for streams)."""
    async with http.post(f"{edge.url}/daveloper.v1.{method}", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as response:
        text = await response.text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if response.status != 200:
        return str(lines[0]["code"])
    return str(lines[-1]["status"]["code"]) if "status" in lines[-1] else "ok"


async def test_lookups_of_another_sessions_ids_are_not_found(app: App, channel: Channel, edge: Edge,
                                                             http: aiohttp.ClientSession, owned: Owned) -> None:
    _, b_token = await create(channel)
    await v1.VectorServiceStub(channel).create_collection(  # B has a collection too, just not A's
        v1.CreateCollectionRequest(collection=v1.Collection(name="mine", dimension=2)), timeout=5,
        metadata=bearer(b_token))
    outcomes = {}
    for method, body in lookups(owned).items():
        try:
            await grpc_call(channel, method, body, b_token)
            grpc = "ok"
        except GRPCError as exc:
            grpc = exc.status.name.lower()
        outcomes[method] = (grpc, await edge_status(http, edge, method, body, b_token))
    assert outcomes == dict.fromkeys(lookups(owned), ("not_found", "not_found"))
    # ... and A's resources are all still there (the Delete*/Cancel* calls touched nothing).
    for method in ("DocumentService/GetDocument", "AgentService/GetConversation", "ScraperService/GetJob",
                   "VectorService/QueryPoints"):
        await grpc_call(channel, method, lookups(owned)[method], owned.token)


async def test_ids_that_are_not_lookups(app: App, channel: Channel, edge: Edge, http: aiohttp.ClientSession,
                                        owned: Owned) -> None:
    _, b_token = await create(channel)
    # Upload: A's client document id does not reach A's document.
    theirs = await upload(channel, b_token, GUIDE + b"\nB's copy.\n", client_id="guide-a")
    assert theirs.stored is not None
    assert theirs.stored.id != owned.document_id
    socket = await connect(http, edge, token=b_token)
    await socket.send({"type": "open", "id": 1, "method": "/daveloper.v1.DocumentService/Upload"})
    header = {"fileName": "x.md", "clientDocumentId": "guide-a"}
    await socket.send({"type": "msg", "id": 1, "message": {"header": header}})
    await socket.send({"type": "msg", "id": 1, "message": {"chunk": "IyBY"}, "end": True})
    frames = await socket.until_close(1)
    assert status(frames) == {"code": "ok"}
    assert all(owned.document_id not in json.dumps(f) for f in frames)
    # Search: A's document id filters to nothing.
    search = {"query": "Redis", "documentIds": [owned.document_id]}
    (found,) = await grpc_call(channel, "DocumentService/Search", search, b_token)
    assert found.hits == []
    assert await edge_status(http, edge, "DocumentService/Search", search, b_token) == "ok"
    # Watch: A's conversation id is an empty conversation of B's, waited on like one never used.
    for conversation_id in (owned.conversation_id, "never-used"):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                [r async for r in v1.AgentServiceStub(channel).watch(
                    v1.WatchRequest(conversation_id=conversation_id), timeout=5, metadata=bearer(b_token))]
    # Chat: B's send on A's conversation id is B's own conversation; A's document ids cite nothing;
    # a cancel of A's turn is NOT_FOUND.
    send = v1.ChatRequest(send=v1.SendMessage(conversation_id=owned.conversation_id, text="Redis?",
                                              options=v1.ChatOptions(document_ids=[owned.document_id])))
    events = [r.event async for r in v1.AgentServiceStub(channel).chat([send], timeout=30, metadata=bearer(b_token))]
    assert events[-1].turn_completed is not None
    assert [e.citation for e in events if e.citation is not None and e.citation.document_id == owned.document_id] == []
    a_conversation = await grpc_call(channel, "AgentService/GetConversation",
                                     {"conversationId": owned.conversation_id}, owned.token)
    b_conversation = await grpc_call(channel, "AgentService/GetConversation",
                                     {"conversationId": owned.conversation_id}, b_token)
    assert [len(c.turns) for c in (*a_conversation, *b_conversation)] == [1, 1]
    cancel = v1.ChatRequest(cancel=v1.CancelTurnRequest(conversation_id=owned.conversation_id, turn_id=owned.turn_id))
    with pytest.raises(GRPCError) as caught:
        [r async for r in v1.AgentServiceStub(channel).chat([cancel], timeout=10, metadata=bearer(b_token))]
    assert caught.value.status is Status.NOT_FOUND
    frames = await socket.call(3, "/daveloper.v1.AgentService/Chat",
                               {"cancel": {"conversationId": owned.conversation_id, "turnId": owned.turn_id}})
    assert status(frames)["code"] == "not_found"
    await socket.ws.close()
    # CreateCollection: A's name is free in B's namespace; A's collection keeps its point.
    await grpc_call(channel, "VectorService/CreateCollection", {"collection": {"name": "notes", "dimension": 2}},
                    b_token)
    (a_points,) = await grpc_call(channel, "VectorService/QueryPoints", {"collection": "notes", "dense": [1.0, 0.0]},
                                  owned.token)
    assert [p.point.id for p in a_points.points] == ["1"]
    # ListAuditEvents: admin only.
    with pytest.raises(GRPCError) as caught:
        await grpc_call(channel, "LogsService/ListAuditEvents", {"sessionId": "anything"}, b_token)
    assert caught.value.status is Status.PERMISSION_DENIED
    assert await edge_status(http, edge, "LogsService/ListAuditEvents", {"sessionId": "x"}, b_token) == \
        "permission_denied"
