"""``daveloper.v1.VectorService``: raw points with caller-supplied vectors, inside the caller's session.

A session's collection ``name`` is the Qdrant collection
``dv_v_<first 16 hex of sha256(session id)>_<name>``: sessions cannot see,
name or guess each other's collections, so every cross-session attempt is a
plain NOT_FOUND. Dense vectors are the named vector ``dense``, sparse ones
``sparse``; a query with both fuses the two rankings with RRF.

Every input is validated here, with ``google.rpc.BadRequest`` field paths such
as ``points[3].dense``, before anything reaches Qdrant.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from daveloper.documents.store import ChunkStore
from daveloper.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from daveloper.rpc import Authenticator, Call, Servicer
from daveloper.vectors import (
    CollectionSpec,
    DenseParams,
    Match,
    Nearest,
    PointData,
    PointId,
    PointQuery,
    Record,
    Sparse,
    SparseParams,
    VectorEngine,
)
from daveloper.vectors import Distance as EngineDistance
from generated.daveloper.v1 import (
    Collection,
    CreateCollectionRequest,
    CreateCollectionResponse,
    DeleteCollectionRequest,
    DeleteCollectionResponse,
    DeletePointsRequest,
    DeletePointsResponse,
    Distance,
    ListCollectionsRequest,
    ListCollectionsResponse,
    Point,
    QueryPointsRequest,
    QueryPointsResponse,
    ScoredPoint,
    SparseVector,
    UpsertPointsRequest,
    UpsertPointsResponse,
    VectorServiceBase,
)
from generated.google.protobuf import Struct

__all__ = ["VectorService", "delete_session_vectors", "session_collection_prefix"]

MAX_DIMENSION = 4096
MAX_COLLECTIONS = 32
MAX_POINTS_PER_UPSERT = 256
MAX_IDS_PER_DELETE = 1000
MAX_SPARSE_ENTRIES = 4096
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_PAYLOAD_FILTERS = 16
#: More violations than this are summarised: the error detail must stay small.
_MAX_VIOLATIONS = 20

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DENSE = "dense"
_SPARSE = "sparse"
_DISTANCES = {
    Distance.UNSPECIFIED: EngineDistance.COSINE,
    Distance.COSINE: EngineDistance.COSINE,
    Distance.DOT: EngineDistance.DOT,
    Distance.EUCLID: EngineDistance.EUCLID,
}
_PROTO_DISTANCES = {v: k for k, v in _DISTANCES.items() if k is not Distance.UNSPECIFIED}


def session_collection_prefix(session_id: str) -> str:
    """The prefix of every Qdrant collection that belongs to ``session_id``."""
    return f"dv_v_{hashlib.sha256(session_id.encode()).hexdigest()[:16]}_"


async def delete_session_vectors(engine: VectorEngine, session_id: str, chunks: ChunkStore | None = None) -> None:
    """Drop all of a session's vector collections and (given the store) its document chunks."""
    prefix = session_collection_prefix(session_id)
    for name in await engine.list_collections():
        if name.startswith(prefix):
            await engine.drop_collection(name)
    if chunks is not None:
        await chunks.delete_session(session_id)


class _Violations:
    """Collects ``(field, problem)`` pairs and raises them as one ``InvalidArgument``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, problem: str) -> None:
        self.items.append((field, problem))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        summary = "; ".join(f"{f}: {p}" for f, p in self.items[:3])
        if len(self.items) > 3:
            summary += f" (and {len(self.items) - 3} more)"
        shown = self.items[:_MAX_VIOLATIONS]
        if len(self.items) > len(shown):
            shown.append(("", f"{len(self.items) - len(shown)} more violations not shown"))
        raise InvalidArgument(summary, violations=shown)


def _check_name(name: str, field: str, errors: _Violations) -> None:
    if not _NAME.fullmatch(name):
        errors.add(field, "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")


def _point_id(text: str) -> PointId | None:
    """A Qdrant point id from its text form (unsigned integer or UUID), or ``None`` if it is neither."""
    if text.isascii() and text.isdigit():
        value = int(text)
        return value if value < 2**64 else None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _check_dense(values: Sequence[float], dimension: int, distance: Distance, field: str, errors: _Violations) -> None:
    if dimension == 0:
        errors.add(field, "this collection has no dense vectors")
    elif len(values) != dimension:
        errors.add(field, f"has {len(values)} values, the collection's dimension is {dimension}")
    elif not all(math.isfinite(v) for v in values):
        errors.add(field, "values must be finite")
    elif distance is Distance.COSINE and not any(values):
        errors.add(field, "must not be all zeros for cosine distance")


def _check_sparse(vector: SparseVector, has_sparse: bool, field: str, errors: _Violations) -> None:
    if not has_sparse:
        errors.add(field, "this collection has no sparse vectors")
    elif len(vector.indices) != len(vector.values):
        errors.add(field, f"{len(vector.indices)} indices but {len(vector.values)} values")
    elif len(vector.indices) > MAX_SPARSE_ENTRIES:
        errors.add(f"{field}.indices", f"at most {MAX_SPARSE_ENTRIES} entries")
    elif len(set(vector.indices)) != len(vector.indices):
        errors.add(f"{field}.indices", "must be unique")
    elif not all(math.isfinite(v) for v in vector.values):
        errors.add(f"{field}.values", "must be finite")


def _sparse(vector: SparseVector | None) -> SparseVector | None:
    """An empty sparse vector counts as none (proto3 cannot tell them apart reliably)."""
    return vector if vector is not None and (vector.indices or vector.values) else None


def _to_engine_sparse(vector: SparseVector) -> Sparse:
    return Sparse(tuple(vector.indices), tuple(vector.values))


class VectorService(Servicer):
    """Collections and points of caller-supplied vectors, namespaced by session (see the module docstring)."""

    base = VectorServiceBase

    def __init__(self, *, auth: Authenticator, qdrant: VectorEngine) -> None:
        super().__init__(auth=auth)
        self._qdrant = qdrant

    def _prefix(self, call: Call[Any, Any]) -> str:
        if call.principal is None or call.principal.admin:
            raise PermissionDenied("vector collections belong to a session: call with a session token",
                                   reason="SESSION_REQUIRED")
        return session_collection_prefix(call.session_id)

    async def _describe(self, qdrant_name: str, name: str) -> Collection:
        try:
            info = await self._qdrant.describe(qdrant_name)
        except NotFound:
            raise NotFound(f"collection {name!r} not found", reason="COLLECTION_NOT_FOUND") from None
        dense = info.dense.get(_DENSE)
        return Collection(
            name=name,
            dimension=dense.size if dense else 0,
            distance=_PROTO_DISTANCES.get(dense.distance, Distance.UNSPECIFIED) if dense
            else Distance.UNSPECIFIED,
            sparse=_SPARSE in info.sparse,
            point_count=info.points,
        )

    async def _own_names(self, prefix: str) -> list[str]:
        return sorted(n.removeprefix(prefix) for n in await self._qdrant.list_collections() if n.startswith(prefix))

    async def CreateCollection(
        self, request: CreateCollectionRequest, call: Call[Any, Any]
    ) -> CreateCollectionResponse:
        prefix = self._prefix(call)
        spec = request.collection or Collection()
        errors = _Violations()
        _check_name(spec.name, "collection.name", errors)
        if spec.distance not in _DISTANCES:
            errors.add("collection.distance", "unknown distance")
        if spec.dimension > MAX_DIMENSION:
            errors.add("collection.dimension", f"must be at most {MAX_DIMENSION}")
        if spec.dimension == 0 and not spec.sparse:
            errors.add("collection.dimension", "must be 1 or more unless the collection is sparse")
        if spec.point_count:
            errors.add("collection.point_count", "is output only")
        errors.raise_if_any()
        existing = await self._own_names(prefix)
        if spec.name in existing:
            raise AlreadyExists(f"collection {spec.name!r} already exists", reason="COLLECTION_EXISTS")
        if len(existing) >= MAX_COLLECTIONS:
            raise ResourceExhausted(f"a session may have at most {MAX_COLLECTIONS} collections",
                                    reason="COLLECTION_LIMIT", metadata={"limit": str(MAX_COLLECTIONS)})
        dense = {_DENSE: DenseParams(spec.dimension, _DISTANCES[spec.distance])} if spec.dimension else {}
        sparse = {_SPARSE: SparseParams()} if spec.sparse else {}
        try:
            await self._qdrant.create_collection(prefix + spec.name, CollectionSpec(dense=dense, sparse=sparse))
        except AlreadyExists:
            raise AlreadyExists(f"collection {spec.name!r} already exists", reason="COLLECTION_EXISTS") from None
        return CreateCollectionResponse(collection=await self._describe(prefix + spec.name, spec.name))

    async def ListCollections(
        self, request: ListCollectionsRequest, call: Call[Any, Any]
    ) -> ListCollectionsResponse:
        prefix = self._prefix(call)
        collections = []
        for name in await self._own_names(prefix):
            try:
                collections.append(await self._describe(prefix + name, name))
            except NotFound:
                continue  # deleted while we were listing
        return ListCollectionsResponse(collections=collections)

    async def DeleteCollection(
        self, request: DeleteCollectionRequest, call: Call[Any, Any]
    ) -> DeleteCollectionResponse:
        prefix = self._prefix(call)
        errors = _Violations()
        _check_name(request.name, "name", errors)
        errors.raise_if_any()
        deleted = await self._qdrant.drop_collection(prefix + request.name)
        if not deleted:
            raise NotFound(f"collection {request.name!r} not found", reason="COLLECTION_NOT_FOUND")
        return DeleteCollectionResponse()

    async def _collection(self, call: Call[Any, Any], name: str, field: str = "collection") -> tuple[str, Collection]:
        """The Qdrant name and description of one of the caller's collections (NOT_FOUND if absent)."""
        prefix = self._prefix(call)
        errors = _Violations()
        _check_name(name, field, errors)
        errors.raise_if_any()
        return prefix + name, await self._describe(prefix + name, name)

    async def UpsertPoints(self, request: UpsertPointsRequest, call: Call[Any, Any]) -> UpsertPointsResponse:
        if not 1 <= len(request.points) <= MAX_POINTS_PER_UPSERT:
            raise InvalidArgument.field("points", f"must hold 1 to {MAX_POINTS_PER_UPSERT} points")
        qdrant_name, spec = await self._collection(call, request.collection)
        errors = _Violations()
        structs: list[PointData] = []
        seen: set[PointId] = set()
        for i, point in enumerate(request.points):
            field = f"points[{i}]"
            point_id = _point_id(point.id)
            if point_id is None:
                errors.add(f"{field}.id", "must be a UUID or an unsigned 64-bit integer")
            elif point_id in seen:
                errors.add(f"{field}.id", "appears more than once in this request")
            else:
                seen.add(point_id)
            sparse = _sparse(point.sparse)
            if not point.dense and sparse is None:
                errors.add(field, "needs a dense or a sparse vector")
            named: dict[str, Sequence[float] | Sparse] = {}
            if point.dense:
                _check_dense(point.dense, spec.dimension, spec.distance, f"{field}.dense", errors)
                named[_DENSE] = list(point.dense)
            if sparse is not None:
                _check_sparse(sparse, spec.sparse, f"{field}.sparse", errors)
                named[_SPARSE] = _to_engine_sparse(sparse)
            if point_id is not None and not errors.items:
                payload = point.payload.to_dict() if point.payload is not None else {}
                structs.append(PointData(point_id, named, payload))
        errors.raise_if_any()
        await self._qdrant.upsert(qdrant_name, structs)
        return UpsertPointsResponse(upserted=len(structs))

    async def QueryPoints(self, request: QueryPointsRequest, call: Call[Any, Any]) -> QueryPointsResponse:
        qdrant_name, spec = await self._collection(call, request.collection)
        errors = _Violations()
        sparse = _sparse(request.sparse)
        if not request.dense and sparse is None:
            errors.add("dense", "give a dense or a sparse query vector (or both, fused with RRF)")
        if request.dense:
            _check_dense(request.dense, spec.dimension, spec.distance, "dense", errors)
        if sparse is not None:
            _check_sparse(sparse, spec.sparse, "sparse", errors)
        if request.limit > MAX_LIMIT:
            errors.add("limit", f"must be at most {MAX_LIMIT}")
        if len(request.payload_filter) > MAX_PAYLOAD_FILTERS:
            errors.add("payload_filter", f"at most {MAX_PAYLOAD_FILTERS} entries")
        for key in request.payload_filter:
            if not key or len(key) > 128 or '"' in key or "\\" in key:
                errors.add(f"payload_filter[{key!r}]", 'key must be 1-128 characters without " or \\')
        errors.raise_if_any()

        # Quoted keys name one top-level payload key exactly, dots and all.
        where = tuple(Match(f'"{k}"', v) for k, v in request.payload_filter.items())
        limit = request.limit or DEFAULT_LIMIT
        stages: list[Nearest] = []
        if request.dense:
            stages.append(Nearest(_DENSE, tuple(request.dense)))
        if sparse is not None:
            stages.append(Nearest(_SPARSE, _to_engine_sparse(sparse)))
        records = await self._qdrant.query_points(qdrant_name, PointQuery(
            tuple(stages), limit=limit, where=where, depth=min(limit * 4, 400),
            with_payload=request.with_payload, with_vectors=request.with_vectors))
        return QueryPointsResponse(points=[
            ScoredPoint(point=self._point(r, request.with_payload, request.with_vectors), score=r.score)
            for r in records
        ])

    @staticmethod
    def _point(record: Record, with_payload: bool, with_vectors: bool) -> Point:
        point = Point(id=record.id)
        if with_payload:
            point.payload = Struct.from_dict(record.payload)
        if with_vectors:
            dense = record.vectors.get(_DENSE)
            if isinstance(dense, list):
                point.dense = dense
            sparse = record.vectors.get(_SPARSE)
            if isinstance(sparse, Sparse):
                point.sparse = SparseVector(indices=list(sparse.indices), values=list(sparse.values))
        return point

    async def DeletePoints(self, request: DeletePointsRequest, call: Call[Any, Any]) -> DeletePointsResponse:
        if not 1 <= len(request.ids) <= MAX_IDS_PER_DELETE:
            raise InvalidArgument.field("ids", f"must hold 1 to {MAX_IDS_PER_DELETE} ids")
        qdrant_name, _ = await self._collection(call, request.collection)
        errors = _Violations()
        ids: dict[PointId, None] = {}
        for i, text in enumerate(request.ids):
            point_id = _point_id(text)
            if point_id is None:
                errors.add(f"ids[{i}]", "must be a UUID or an unsigned 64-bit integer")
            else:
                ids[point_id] = None
        errors.raise_if_any()
        wanted = list(ids)
        # Qdrant does not say how many points a delete removed; count the ones that exist first.
        existing = await self._qdrant.retrieve(qdrant_name, wanted)
        await self._qdrant.delete_points(qdrant_name, wanted)
        return DeletePointsResponse(deleted=len(existing))
