"""A Qdrant server or cluster through qdrant-client's ``AsyncQdrantClient``.

Used when ``DAVELOPER_QDRANT_URL`` is set. The same class also drives
qdrant-client's local mode (``AsyncQdrantClient(path=...)``), which speaks the
identical API: the conformance suite runs against it, and the migration reads
a data dir written by earlier versions through it. Importing this module
imports qdrant-client, so callers import it only when they need it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from daveloper.errors import AlreadyExists, Internal, InvalidArgument, NotFound, Unavailable
from daveloper.vectors.model import (
    CollectionInfo,
    CollectionSpec,
    Condition,
    DenseParams,
    Distance,
    Filter,
    IndexKind,
    Match,
    MatchAny,
    MatchExcept,
    Nearest,
    PointData,
    PointId,
    PointQuery,
    Record,
    Sparse,
    SparseParams,
)

__all__ = ["RemoteEngine", "qdrant_errors"]

#: Points per upsert request.
BATCH_SIZE = 256
_DISTANCES = {Distance.COSINE: models.Distance.COSINE, Distance.DOT: models.Distance.DOT,
              Distance.EUCLID: models.Distance.EUCLID}
_FROM_DISTANCES = {v: k for k, v in _DISTANCES.items()}


@contextmanager
def qdrant_errors(what: str) -> Iterator[None]:
    """Translate qdrant-client exceptions raised inside the block into Daveloper's error tree.

    A server answers with HTTP statuses; local mode raises ``ValueError`` with
    a message, matched for the cases callers act on (missing and existing
    collections, vectors that do not fit). Anything else stays as is.
    """
    try:
        yield
    except UnexpectedResponse as exc:
        status = exc.status_code or 0
        body = exc.content.decode(errors="replace")[:200]
        if status == 404:
            raise NotFound(f"{what}: not found", reason="COLLECTION_NOT_FOUND") from exc
        if status == 409 or (status == 400 and "already exists" in body):
            raise AlreadyExists(f"{what}: already exists", reason="COLLECTION_EXISTS") from exc
        if status == 400 and ("dimension" in body or "Not existing vector name" in body):
            raise InvalidArgument(f"{what}: {body}") from exc
        if status == 429 or status >= 500:
            raise Unavailable(f"{what}: Qdrant answered HTTP {status}", retry_after=1.0) from exc
        raise Internal(f"{what}: Qdrant refused the request (HTTP {status}): {body}") from exc
    except (ApiException, OSError, TimeoutError) as exc:
        raise Unavailable(f"{what}: Qdrant does not answer: {exc or type(exc).__name__}", retry_after=1.0) from exc
    except ValueError as exc:
        message = str(exc)
        if message.startswith("Collection ") and message.endswith(" not found"):
            raise NotFound(f"{what}: not found", reason="COLLECTION_NOT_FOUND") from exc
        if message.startswith("Collection ") and message.endswith(" already exists"):
            raise AlreadyExists(f"{what}: already exists", reason="COLLECTION_EXISTS") from exc
        # Local mode reports a dense query of the wrong size through numpy ("shapes ... not aligned").
        if any(m in message for m in ("dimension", "Wrong input", "is not found in the collection", "not aligned")):
            raise InvalidArgument(f"{what}: {message}") from exc
        raise


def _condition(condition: Condition) -> models.FieldCondition:
    if isinstance(condition, Match):
        return models.FieldCondition(key=condition.key, match=models.MatchValue(value=condition.value))
    if isinstance(condition, MatchAny):
        return models.FieldCondition(key=condition.key, match=models.MatchAny(any=list(condition.values)))
    if isinstance(condition, MatchExcept):
        return models.FieldCondition(key=condition.key, match=models.MatchExcept(**{"except": list(condition.values)}))
    return models.FieldCondition(key=condition.key, range=models.Range(gte=condition.gte, lt=condition.lt))


def _filter(where: Filter | None) -> models.Filter | None:
    return models.Filter(must=[_condition(c) for c in where]) if where else None


def _vector(vector: Sequence[float] | Sparse) -> Any:
    if isinstance(vector, Sparse):
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return [float(x) for x in vector]


def _params(nearest: Nearest) -> models.SearchParams | None:
    if nearest.idf_corpus is None:
        return None
    return models.SearchParams(idf=models.IdfCorpusParams(corpus=_filter(nearest.idf_corpus) or models.Filter()))


def _record(point: models.ScoredPoint | models.Record) -> Record:
    vectors: dict[str, list[float] | Sparse] = {}
    if isinstance(point.vector, dict):
        for name, value in point.vector.items():
            if isinstance(value, models.SparseVector):
                vectors[name] = Sparse(tuple(value.indices), tuple(float(v) for v in value.values))
            elif isinstance(value, list) and all(isinstance(v, float | int) for v in value):
                vectors[name] = [float(v) for v in value]  # type: ignore[arg-type]
    return Record(id=str(point.id), payload=dict(point.payload or {}),
                  score=float(getattr(point, "score", 0.0) or 0.0), vectors=vectors)


class RemoteEngine:
    """A :class:`~daveloper.vectors.VectorEngine` on an ``AsyncQdrantClient`` (see the module docstring).

    Closing the engine closes the client.
    """

    kind = "qdrant"

    def __init__(self, client: AsyncQdrantClient, *, batch_size: int = BATCH_SIZE) -> None:
        self.client = client
        self._batch_size = batch_size

    async def list_collections(self) -> list[str]:
        with qdrant_errors("listing collections"):
            listing = await self.client.get_collections()
        return sorted(c.name for c in listing.collections)

    async def describe(self, collection: str) -> CollectionInfo:
        with qdrant_errors(f"collection {collection!r}"):
            info = await self.client.get_collection(collection)
        vectors = info.config.params.vectors
        dense = ({name: DenseParams(size=v.size, distance=_FROM_DISTANCES.get(v.distance, Distance.COSINE))
                  for name, v in vectors.items()} if isinstance(vectors, dict) else {})
        sparse = {name: SparseParams(idf=v.modifier == models.Modifier.IDF)
                  for name, v in (info.config.params.sparse_vectors or {}).items()}
        indexes = {}
        for field, schema in (info.payload_schema or {}).items():
            if schema.data_type == models.PayloadSchemaType.INTEGER:
                indexes[field] = IndexKind.INTEGER
            elif schema.data_type == models.PayloadSchemaType.KEYWORD:
                tenant = isinstance(schema.params, models.KeywordIndexParams) and bool(schema.params.is_tenant)
                indexes[field] = IndexKind.TENANT if tenant else IndexKind.KEYWORD
        return CollectionInfo(dense=dense, sparse=sparse, points=info.points_count or 0, indexes=indexes)

    async def create_collection(self, collection: str, spec: CollectionSpec) -> None:
        what = f"creating collection {collection!r}"
        with qdrant_errors(what):
            await self.client.create_collection(
                collection,
                vectors_config={n: models.VectorParams(size=p.size, distance=_DISTANCES[p.distance])
                                for n, p in spec.dense.items()},
                sparse_vectors_config={n: models.SparseVectorParams(modifier=models.Modifier.IDF if p.idf else None)
                                       for n, p in spec.sparse.items()} or None,
            )
        for field, kind in spec.indexes.items():
            await self.create_index(collection, field, kind)

    async def create_index(self, collection: str, field: str, kind: IndexKind) -> None:
        schema: models.PayloadSchemaType | models.KeywordIndexParams = (
            models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
            if kind is IndexKind.TENANT else
            models.PayloadSchemaType.INTEGER if kind is IndexKind.INTEGER else models.PayloadSchemaType.KEYWORD)
        with warnings.catch_warnings(), qdrant_errors(f"indexing {field} of {collection!r}"):
            # Local mode warns that it has no payload indexes; a server uses them.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            await self.client.create_payload_index(collection, field, field_schema=schema)

    async def drop_collection(self, collection: str) -> bool:
        with qdrant_errors(f"dropping collection {collection!r}"):
            return bool(await self.client.delete_collection(collection))

    async def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        structs = [models.PointStruct(id=p.id, vector={n: _vector(v) for n, v in p.vectors.items()},
                                      payload=dict(p.payload)) for p in points]
        with qdrant_errors(f"storing points in {collection!r}"):
            for start in range(0, len(structs), self._batch_size):
                await self.client.upsert(collection, structs[start:start + self._batch_size], wait=True)

    async def delete_points(self, collection: str, ids: Sequence[PointId]) -> None:
        with qdrant_errors(f"deleting points of {collection!r}"):
            await self.client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    async def delete_where(self, collection: str, where: Filter) -> None:
        selector = models.FilterSelector(filter=_filter(where) or models.Filter())
        with qdrant_errors(f"deleting points of {collection!r}"):
            await self.client.delete(collection, points_selector=selector, wait=True)

    async def count(self, collection: str, where: Filter = ()) -> int:
        with qdrant_errors(f"counting points of {collection!r}"):
            result = await self.client.count(collection, count_filter=_filter(where), exact=True)
        return result.count

    async def scroll(self, collection: str, where: Filter = (), *, limit: int, offset: PointId | None = None,
                     with_vectors: bool = False) -> tuple[list[Record], PointId | None]:
        with qdrant_errors(f"reading points of {collection!r}"):
            records, following = await self.client.scroll(collection, scroll_filter=_filter(where), limit=limit,
                                                          offset=offset, with_payload=True, with_vectors=with_vectors)
        if following is not None and not isinstance(following, int):
            following = str(following)
        return [_record(r) for r in records], following

    async def retrieve(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = False,
                       with_vectors: bool = False) -> list[Record]:
        with qdrant_errors(f"reading points of {collection!r}"):
            found = await self.client.retrieve(collection, ids=list(ids), with_payload=with_payload,
                                               with_vectors=with_vectors)
        return [_record(r) for r in found]

    async def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        if not query.nearest:
            raise ValueError("a query needs at least one nearest-neighbour stage")
        where = _filter(query.where)
        options: dict[str, Any] = {"query_filter": where, "limit": query.limit, "with_payload": query.with_payload,
                                   "with_vectors": query.with_vectors}
        with qdrant_errors(f"querying {collection!r}"):
            if len(query.nearest) == 1:
                (nearest,) = query.nearest
                response = await self.client.query_points(collection, query=_vector(nearest.vector),
                                                          using=nearest.using, search_params=_params(nearest),
                                                          **options)
            else:
                depth = max(query.depth, query.limit)
                response = await self.client.query_points(
                    collection,
                    prefetch=[models.Prefetch(query=_vector(n.vector), using=n.using, filter=where, limit=depth,
                                              params=_params(n)) for n in query.nearest],
                    query=models.FusionQuery(fusion=models.Fusion.RRF), **options)
        return [_record(p) for p in response.points]

    async def ping(self) -> None:
        with qdrant_errors("health check"):
            await self.client.get_collections()

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()
