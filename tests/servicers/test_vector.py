"""VectorService through real gRPC and real session tokens (Valkey), on both vector engines (Edge, qdrant-client)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from daveloper.documents.embeddings import BM25Embedder
from daveloper.documents.model import ChunkDraft
from daveloper.documents.store import ChunkStore
from daveloper.rpc import Interceptor
from daveloper.servicers.vector import VectorService, delete_session_vectors, session_collection_prefix
from daveloper.sessions import SessionStore, TokenSigner
from daveloper.vectors import VectorEngine
from generated.daveloper.v1 import (
    Collection,
    CreateCollectionRequest,
    DeleteCollectionRequest,
    DeletePointsRequest,
    Distance,
    ListCollectionsRequest,
    Point,
    QueryPointsRequest,
    SparseVector,
    UpsertPointsRequest,
    VectorServiceStub,
)
from generated.google.protobuf import Struct
from tests.vectors.engines import engine_fixture  # noqa: F401  (the "engine" fixture)

pytestmark = pytest.mark.timeout(30)

ADMIN = "admin-token-for-tests"


@dataclass
class Env:
    qdrant: VectorEngine
    stub: VectorServiceStub
    alice: dict[str, str]
    bob: dict[str, str]
    alice_id: str
    bob_id: str


@pytest.fixture
async def env(redis: aioredis.Redis, engine: VectorEngine) -> AsyncIterator[Env]:
    qdrant = engine
    sessions = SessionStore(redis, TokenSigner(b"k" * 32), admin_token=ADMIN)
    server = Server([VectorService(auth=sessions, qdrant=qdrant)])
    Interceptor(max_message_bytes=4 * 1024 * 1024).install(server)
    await server.start("127.0.0.1", 0)
    channel = Channel("127.0.0.1", server._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    (alice, alice_token), (bob, bob_token) = [await sessions.create(3600, {}) for _ in range(2)]
    try:
        yield Env(qdrant, VectorServiceStub(channel), {"authorization": f"Bearer {alice_token}"},
                  {"authorization": f"Bearer {bob_token}"}, alice.id, bob.id)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def violations(error: GRPCError) -> list[str]:
    bad = next(d for d in error.details if isinstance(d, error_details_pb2.BadRequest))
    return [v.field for v in bad.field_violations]


async def create(env: Env, who: dict[str, str], name: str = "notes", dimension: int = 3, sparse: bool = True,
                 distance: Distance = Distance.COSINE) -> Collection:
    response = await env.stub.create_collection(CreateCollectionRequest(collection=Collection(
        name=name, dimension=dimension, sparse=sparse, distance=distance)), timeout=5, metadata=who)
    return response.collection


POINTS = [
    Point(id="1", dense=[1, 0, 0], sparse=SparseVector(indices=[7, 9], values=[1.0, 0.5]),
          payload=Struct.from_dict({"kind": "a", "tags": ["x", "y"], "n": 1})),
    Point(id=str(uuid.UUID(int=2)), dense=[0, 1, 0], payload=Struct.from_dict({"kind": "b"})),
    Point(id="3", sparse=SparseVector(indices=[9], values=[2.0]), payload=Struct.from_dict({"kind": "a"})),
]


async def test_collection_and_point_lifecycle(env: Env) -> None:
    created = await create(env, env.alice)
    assert (created.name, created.dimension, created.distance, created.sparse, created.point_count) == (
        "notes", 3, Distance.COSINE, True, 0)
    upserted = await env.stub.upsert_points(UpsertPointsRequest(collection="notes", points=POINTS), timeout=5,
                                            metadata=env.alice)
    assert upserted.upserted == 3
    listed = await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.alice)
    assert [(c.name, c.point_count) for c in listed.collections] == [("notes", 3)]

    dense = await env.stub.query_points(QueryPointsRequest(collection="notes", dense=[0.9, 0.1, 0], limit=5,
                                                           with_payload=True, with_vectors=True),
                                        timeout=5, metadata=env.alice)
    top = dense.points[0]
    assert [p.point.id for p in dense.points] == ["1", str(uuid.UUID(int=2))]  # point 3 has no dense vector
    assert top.point.payload is not None
    assert top.point.payload.to_dict() == {"kind": "a", "tags": ["x", "y"], "n": 1}
    assert top.point.dense == pytest.approx([1, 0, 0])  # cosine: stored normalised
    assert top.point.sparse is not None
    assert list(top.point.sparse.indices) == [7, 9]

    sparse = await env.stub.query_points(QueryPointsRequest(collection="notes", sparse=SparseVector(
        indices=[9], values=[1.0]), payload_filter={"kind": "a"}), timeout=5, metadata=env.alice)
    assert [(p.point.id, p.score) for p in sparse.points] == [("3", pytest.approx(2.0)), ("1", pytest.approx(0.5))]
    assert sparse.points[0].point.payload is None  # not asked for

    hybrid = await env.stub.query_points(QueryPointsRequest(collection="notes", dense=[0, 1, 0], sparse=SparseVector(
        indices=[9], values=[1.0]), limit=3), timeout=5, metadata=env.alice)
    assert {p.point.id for p in hybrid.points} == {"1", "3", str(uuid.UUID(int=2))}

    deleted = await env.stub.delete_points(DeletePointsRequest(collection="notes", ids=["1", "3", "99"]),
                                           timeout=5, metadata=env.alice)
    assert deleted.deleted == 2
    await env.stub.delete_collection(DeleteCollectionRequest(name="notes"), timeout=5, metadata=env.alice)
    listed = await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.alice)
    assert listed.collections == []


async def test_sessions_cannot_reach_each_others_collections(env: Env) -> None:
    await create(env, env.alice, "private")
    await env.stub.upsert_points(UpsertPointsRequest(collection="private", points=POINTS), timeout=5,
                                 metadata=env.alice)
    bob = env.bob
    assert (await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=bob)).collections == []
    attempts = [
        env.stub.query_points(QueryPointsRequest(collection="private", dense=[1, 0, 0]), timeout=5, metadata=bob),
        env.stub.upsert_points(UpsertPointsRequest(collection="private", points=POINTS[:1]), timeout=5,
                               metadata=bob),
        env.stub.delete_points(DeletePointsRequest(collection="private", ids=["1"]), timeout=5, metadata=bob),
        env.stub.delete_collection(DeleteCollectionRequest(name="private"), timeout=5, metadata=bob),
    ]
    for attempt in attempts:
        with pytest.raises(GRPCError) as caught:
            await attempt
        assert caught.value.status is Status.NOT_FOUND
    # Bob's own "private" is a different collection; Alice's points are untouched.
    await create(env, bob, "private", dimension=2, sparse=False)
    alice_view = await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.alice)
    assert [(c.dimension, c.point_count) for c in alice_view.collections] == [(3, 3)]


async def test_names_exist_once_and_missing_is_not_found(env: Env) -> None:
    await create(env, env.alice, "c1")
    with pytest.raises(GRPCError) as exists:
        await create(env, env.alice, "c1")
    assert exists.value.status is Status.ALREADY_EXISTS
    with pytest.raises(GRPCError) as missing:
        await env.stub.query_points(QueryPointsRequest(collection="nope", dense=[1]), timeout=5, metadata=env.alice)
    assert missing.value.status is Status.NOT_FOUND
    with pytest.raises(GRPCError) as gone:
        await env.stub.delete_collection(DeleteCollectionRequest(name="nope"), timeout=5, metadata=env.alice)
    assert gone.value.status is Status.NOT_FOUND


@pytest.mark.parametrize(("collection", "field"), [
    (Collection(name="bad name!", dimension=3), "collection.name"),
    (Collection(name="x" * 65, dimension=3), "collection.name"),
    (Collection(name="big", dimension=4097), "collection.dimension"),
    (Collection(name="empty", dimension=0, sparse=False), "collection.dimension"),
])
async def test_create_validates_the_collection(env: Env, collection: Collection, field: str) -> None:
    with pytest.raises(GRPCError) as caught:
        await env.stub.create_collection(CreateCollectionRequest(collection=collection), timeout=5,
                                         metadata=env.alice)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert violations(caught.value) == [field]


async def test_points_are_validated_with_field_paths(env: Env) -> None:
    await create(env, env.alice, "v", dimension=3, sparse=True)
    bad = [
        Point(id="1", dense=[1, 0, 0]),                                              # fine
        Point(id="2", dense=[1, 0]),                                                 # wrong length
        Point(id="not-an-id", dense=[0, 0, 1]),                                      # bad id
        Point(id="4", sparse=SparseVector(indices=[1, 1], values=[1, 2])),           # duplicate indices
        Point(id="5", sparse=SparseVector(indices=[1, 2], values=[1])),              # lengths differ
        Point(id="6", dense=[0, 0, 0]),                                              # zero vector, cosine
        Point(id="1", dense=[0, 1, 0]),                                              # repeated id
        Point(id="8"),                                                               # no vector
        Point(id=str(2**64), dense=[1, 1, 1]),                                       # id out of range
    ]
    with pytest.raises(GRPCError) as caught:
        await env.stub.upsert_points(UpsertPointsRequest(collection="v", points=bad), timeout=5, metadata=env.alice)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert violations(caught.value) == [
        "points[1].dense", "points[2].id", "points[3].sparse.indices", "points[4].sparse", "points[5].dense",
        "points[6].id", "points[7]", "points[8].id",
    ]
    listed = await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.alice)
    assert listed.collections[0].point_count == 0  # nothing of a bad batch is written

    queries = [
        (QueryPointsRequest(collection="v"), "dense"),
        (QueryPointsRequest(collection="v", dense=[1, 2]), "dense"),
        (QueryPointsRequest(collection="v", dense=[1, 2, 3], limit=101), "limit"),
        (QueryPointsRequest(collection="v", dense=[1, 2, 3], payload_filter={'a"b': "x"}), "payload_filter['a\"b']"),
    ]
    for request, field in queries:
        with pytest.raises(GRPCError) as query_error:
            await env.stub.query_points(request, timeout=5, metadata=env.alice)
        assert violations(query_error.value) == [field]
    with pytest.raises(GRPCError) as too_many:
        await env.stub.upsert_points(UpsertPointsRequest(collection="v", points=[Point(id=str(i), dense=[1, 0, 0])
                                                                                 for i in range(257)]),
                                     timeout=5, metadata=env.alice)
    assert violations(too_many.value) == ["points"]


async def test_sparse_only_collection_refuses_dense_vectors(env: Env) -> None:
    created = await create(env, env.alice, "terms", dimension=0, sparse=True)
    assert (created.dimension, created.distance, created.sparse) == (0, Distance.UNSPECIFIED, True)
    with pytest.raises(GRPCError) as caught:
        await env.stub.upsert_points(UpsertPointsRequest(collection="terms", points=[Point(id="1", dense=[1.0])]),
                                     timeout=5, metadata=env.alice)
    assert violations(caught.value) == ["points[0].dense"]


async def test_calls_need_a_session(env: Env) -> None:
    with pytest.raises(GRPCError) as anonymous:
        await env.stub.list_collections(ListCollectionsRequest(), timeout=5)
    assert anonymous.value.status is Status.UNAUTHENTICATED
    with pytest.raises(GRPCError) as admin:
        await env.stub.list_collections(ListCollectionsRequest(), timeout=5,
                                        metadata={"authorization": f"Bearer {ADMIN}"})
    assert admin.value.status is Status.PERMISSION_DENIED


async def test_delete_session_vectors_drops_only_that_sessions_data(env: Env) -> None:
    await create(env, env.alice, "a1")
    await create(env, env.alice, "a2", dimension=2, sparse=False)
    await create(env, env.bob, "b1")
    store = ChunkStore(env.qdrant)
    for session in (env.alice_id, env.bob_id):
        vectors = await BM25Embedder().embed_documents(["some chunk"])
        await store.upsert(session, "doc", "ing", [ChunkDraft(0, "some chunk", 2)], vectors,
                           document_name="d", source_uri="", metadata={})
    await delete_session_vectors(env.qdrant, env.alice_id, store)
    assert (await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.alice)).collections == []
    bobs = await env.stub.list_collections(ListCollectionsRequest(), timeout=5, metadata=env.bob)
    assert [c.name for c in bobs.collections] == ["b1"]
    assert await store.count(env.alice_id) == 0
    assert await store.count(env.bob_id) == 1
    # Qdrant names carry a hash of the session id, never the id itself.
    names = await env.qdrant.list_collections()
    assert f"{session_collection_prefix(env.bob_id)}b1" in names
    assert not any(env.bob_id in n for n in names)
