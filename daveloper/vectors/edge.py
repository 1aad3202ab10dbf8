"""Qdrant Edge in process: Qdrant's own storage and search engine, one shard per collection.

Layout: ``<root>/<collection>/`` is one ``EdgeShard`` (segments, WAL and the
engine's ``edge_config.json``); ``<root>/.lock`` is held with ``flock`` for the
engine's lifetime, so a second process on the same data dir is refused with a
:class:`~daveloper.errors.ConfigError` instead of a WAL error.

Edge calls are synchronous and hold the GIL while they run, so wherever they
run the event loop waits for each one. Hence:

* every call runs on one dedicated worker thread (which also serialises access
  to the shards: no lock needed around opening, dropping or using them);
* upserts go in batches of :data:`BATCH_SIZE` points (≤ ~10 ms each measured
  here), and the loop runs between batches;
* ``optimize()`` is never called while serving: it blocks for seconds on large
  shards (13 s at 100k points) and queries meet their targets on unoptimized
  appendable segments (see docs/operations.md, "Vector engine", for figures).

Shards open lazily on first use, so start-up does not pay for collections
nobody queries. Everything is flushed on :meth:`EdgeEngine.close`.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import qdrant_edge as qe

from daveloper.errors import (
    AlreadyExists,
    ConfigError,
    DaveloperError,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
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
    Nearest,
    PointData,
    PointId,
    PointQuery,
    Record,
    Sparse,
    SparseParams,
)

__all__ = ["BATCH_SIZE", "RRF_K", "EdgeEngine"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Points per upsert call: small enough that one call stalls the loop only a few milliseconds.
BATCH_SIZE = 256
#: Dense values per upsert call: points with large dense vectors go in smaller batches
#: (measured here: 256 points of 384 dimensions take ~15 ms with their conversion, 128 about half).
DENSE_VALUES_PER_BATCH = 48 * 1024
#: Reciprocal rank fusion constant: Qdrant server's default, so both engines rank alike.
RRF_K = 2
_CONFIG_FILE = "edge_config.json"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_DISTANCES = {Distance.COSINE: qe.Distance.Cosine, Distance.DOT: qe.Distance.Dot, Distance.EUCLID: qe.Distance.Euclid}
_DISTANCE_NAMES = {"cosine": Distance.COSINE, "dot": Distance.DOT, "euclid": Distance.EUCLID}
# Engine messages that mean the caller sent something that does not fit the collection.
_BAD_INPUT = ("dimension error", "Not existing vector name", "Wrong input", "Bad input", "Bad request")


def _index(kind: IndexKind) -> Any:
    if kind is IndexKind.TENANT:
        return qe.KeywordIndexParams(is_tenant=True)
    return qe.PayloadSchemaType.Integer if kind is IndexKind.INTEGER else qe.PayloadSchemaType.Keyword


def _condition(condition: Condition) -> qe.FieldCondition:
    if isinstance(condition, Match):
        return qe.FieldCondition(condition.key, match=qe.MatchValue(condition.value))
    if isinstance(condition, MatchAny):
        return qe.FieldCondition(condition.key, match=qe.MatchAny(list(condition.values)))
    return qe.FieldCondition(condition.key, range=qe.RangeFloat(gte=condition.gte, lt=condition.lt))


def _filter(where: Filter | None) -> qe.Filter | None:
    return qe.Filter(must=[_condition(c) for c in where]) if where else None


def _vector(vector: Sequence[float] | Sparse) -> Any:
    if isinstance(vector, Sparse):
        return qe.SparseVector(list(vector.indices), list(vector.values))
    return list(vector)


def _nearest(nearest: Nearest) -> tuple[qe.Query, qe.SearchParams | None]:
    params = (qe.SearchParams(idf=qe.IdfParams(corpus=_filter(nearest.idf_corpus)))
              if nearest.idf_corpus is not None else None)
    return qe.Query.Nearest(_vector(nearest.vector), using=nearest.using), params


def _request(query: PointQuery) -> qe.QueryRequest:
    where = _filter(query.where)
    options: dict[str, Any] = {"filter": where, "with_payload": query.with_payload,
                               "with_vector": query.with_vectors}
    if len(query.nearest) == 1:
        ranked, params = _nearest(query.nearest[0])
        return qe.QueryRequest(limit=query.limit, query=ranked, params=params, **options)
    prefetches = []
    for nearest in query.nearest:
        ranked, params = _nearest(nearest)
        prefetches.append(qe.Prefetch(max(query.depth, query.limit), query=ranked, params=params, filter=where))
    fusion: Any = qe.Fusion.Rrf(k=RRF_K)  # the stubs type Fusion's variants as not being Fusion
    return qe.QueryRequest(limit=query.limit, prefetches=prefetches, query=fusion, **options)


def _record(point: qe.ScoredPoint | qe.Record) -> Record:
    vectors: dict[str, list[float] | Sparse] = {}
    if isinstance(point.vector, dict):
        for name, value in point.vector.items():
            if isinstance(value, qe.SparseVector):
                vectors[name] = Sparse(tuple(value.indices), tuple(float(v) for v in value.values))
            elif value and isinstance(value[0], float | int):
                vectors[name] = [float(v) for v in value]
    return Record(id=str(point.id), payload=dict(point.payload or {}),
                  score=float(getattr(point, "score", 0.0) or 0.0), vectors=vectors)


def _point_id(point_id: PointId) -> PointId:
    # Edge takes UUIDs in any spelling; qdrant-client normalises them. Do the same, so ids read back alike.
    return point_id if isinstance(point_id, int) else str(uuid.UUID(point_id))


def _index_kinds(schema: dict[str, qe.PayloadIndexInfo]) -> dict[str, IndexKind]:
    kinds = {}
    for field, info in schema.items():
        if info.data_type == qe.PayloadSchemaType.Integer:
            kinds[field] = IndexKind.INTEGER
        elif info.data_type == qe.PayloadSchemaType.Keyword:
            tenant = isinstance(info.params, qe.KeywordIndexParams) and bool(info.params.is_tenant)
            kinds[field] = IndexKind.TENANT if tenant else IndexKind.KEYWORD
    return kinds


def _read_info(path: Path, shard: qe.EdgeShard) -> CollectionInfo:
    """A shard's vectors (from the config the engine persists next to its segments), indexes and size."""
    info = shard.info()
    config = json.loads((path / _CONFIG_FILE).read_text())
    dense = {name: DenseParams(size=int(v["size"]), distance=_DISTANCE_NAMES[str(v["distance"]).lower()])
             for name, v in (config.get("vectors") or {}).items()}
    sparse = {name: SparseParams(idf=str((v or {}).get("modifier") or "").lower() == "idf")
              for name, v in (config.get("sparse_vectors") or {}).items()}
    return CollectionInfo(dense=dense, sparse=sparse, points=info.points_count,
                          indexes=_index_kinds(info.payload_schema))


class EdgeEngine:
    """A :class:`~daveloper.vectors.VectorEngine` on Qdrant Edge shards under ``root`` (see the module docstring).

    Build it with :meth:`open`; :meth:`close` it once.
    """

    kind = "qdrant-edge"

    def __init__(self, root: Path, lock: IO[str], *, batch_size: int = BATCH_SIZE) -> None:
        self.root = root
        self._lock = lock
        self._batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        # Touched only on the worker thread.
        self._shards: dict[str, qe.EdgeShard] = {}
        self._closed = False

    @classmethod
    def open(cls, root: Path, *, batch_size: int = BATCH_SIZE) -> EdgeEngine:
        """Take ``root`` for this process (``ConfigError`` if another holds it)."""
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".lock", "a")  # noqa: SIM115 (held for the engine's lifetime, closed in close())
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"Qdrant Edge storage {root} is in use by another process; give each Daveloper process its own "
                "data dir, or share a Qdrant server with DAVELOPER_QDRANT_URL"
            ) from None
        return cls(root, lock, batch_size=batch_size)

    async def _run(self, what: str, call: Callable[[], T]) -> T:
        if self._closed:
            raise Unavailable(f"{what}: the vector engine is closed", retry_after=1.0)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except DaveloperError:
            raise
        except Exception as exc:
            if type(exc) is not Exception:  # Edge raises plain Exception; anything else is our bug
                raise
            message = str(exc)
            if any(marker in message for marker in _BAD_INPUT):
                raise InvalidArgument(f"{what}: {message}") from exc
            if "not initialized" in message:
                raise Unavailable(f"{what}: {message}", retry_after=1.0) from exc
            raise Internal(f"{what}: Qdrant Edge failed: {message}") from exc

    def _path(self, collection: str) -> Path:
        if not _NAME.fullmatch(collection):
            raise InvalidArgument(f"unusable collection name {collection!r}")
        return self.root / collection

    def _shard(self, collection: str) -> qe.EdgeShard:
        """The open shard of ``collection``, loading it on first use (worker thread only)."""
        shard = self._shards.get(collection)
        if shard is None:
            path = self._path(collection)
            if not (path / _CONFIG_FILE).is_file():
                raise NotFound(f"collection {collection!r} not found", reason="COLLECTION_NOT_FOUND")
            shard = self._shards[collection] = qe.EdgeShard.load(str(path))
        return shard

    async def list_collections(self) -> list[str]:
        def listing() -> list[str]:
            return sorted(p.name for p in self.root.iterdir()
                          if _NAME.fullmatch(p.name) and (p / _CONFIG_FILE).is_file())
        return await self._run("listing collections", listing)

    async def describe(self, collection: str) -> CollectionInfo:
        def describe() -> CollectionInfo:
            return _read_info(self._path(collection), self._shard(collection))
        return await self._run(f"collection {collection!r}", describe)

    async def create_collection(self, collection: str, spec: CollectionSpec) -> None:
        def create() -> None:
            path = self._path(collection)
            if (path / _CONFIG_FILE).is_file():
                raise AlreadyExists(f"collection {collection!r} already exists", reason="COLLECTION_EXISTS")
            shutil.rmtree(path, ignore_errors=True)  # what a create that crashed half-way left
            config = qe.EdgeConfig(
                vectors={n: qe.EdgeVectorParams(p.size, _DISTANCES[p.distance]) for n, p in spec.dense.items()},
                sparse_vectors={n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if p.idf else None)
                                for n, p in spec.sparse.items()},
            )
            shard = qe.EdgeShard.create(str(path), config)
            try:
                for field, kind in spec.indexes.items():
                    shard.update(qe.UpdateOperation.create_field_index(field, _index(kind)))
                shard.flush()
            except BaseException:
                shard.close()
                shutil.rmtree(path, ignore_errors=True)
                raise
            self._shards[collection] = shard
        await self._run(f"creating collection {collection!r}", create)

    async def create_index(self, collection: str, field: str, kind: IndexKind) -> None:
        def create() -> None:
            self._shard(collection).update(qe.UpdateOperation.create_field_index(field, _index(kind)))
        await self._run(f"indexing {field} of {collection!r}", create)

    async def drop_collection(self, collection: str) -> bool:
        def drop() -> bool:
            path = self._path(collection)
            shard = self._shards.pop(collection, None)
            if shard is not None:
                shard.close()
            if not path.exists():
                return False
            # Renamed first: a crash half-way through the delete leaves no half collection behind.
            doomed = path.with_name(f".{collection}.{uuid.uuid4().hex}.dropped")
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            return True
        return await self._run(f"dropping collection {collection!r}", drop)

    async def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        def batch(part: Sequence[PointData]) -> None:
            self._shard(collection).update(qe.UpdateOperation.upsert_points([
                qe.Point(_point_id(p.id), {name: _vector(v) for name, v in p.vectors.items()}, dict(p.payload))
                for p in part
            ]))
        widest = max((len(v) for p in points[:1] for v in p.vectors.values() if not isinstance(v, Sparse)),
                     default=0)
        size = max(16, min(self._batch_size, DENSE_VALUES_PER_BATCH // widest)) if widest else self._batch_size
        for start in range(0, len(points), size):
            part = points[start:start + size]
            await self._run(f"storing points in {collection!r}", functools.partial(batch, part))

    async def delete_points(self, collection: str, ids: Sequence[PointId]) -> None:
        def delete() -> None:
            self._shard(collection).update(qe.UpdateOperation.delete_points([_point_id(i) for i in ids]))
        await self._run(f"deleting points of {collection!r}", delete)

    async def delete_where(self, collection: str, where: Filter) -> None:
        selector = _filter(where) or qe.Filter(must=[])

        def delete() -> None:
            self._shard(collection).update(qe.UpdateOperation.delete_points_by_filter(selector))
        await self._run(f"deleting points of {collection!r}", delete)

    async def count(self, collection: str, where: Filter = ()) -> int:
        request = qe.CountRequest(exact=True, filter=_filter(where))
        return await self._run(f"counting points of {collection!r}", lambda: self._shard(collection).count(request))

    async def scroll(self, collection: str, where: Filter = (), *, limit: int, offset: PointId | None = None,
                     with_vectors: bool = False) -> tuple[list[Record], PointId | None]:
        request = qe.ScrollRequest(offset=_point_id(offset) if offset is not None else None, limit=limit,
                                   filter=_filter(where), with_payload=True, with_vector=with_vectors)

        def scroll() -> tuple[list[Record], PointId | None]:
            records, following = self._shard(collection).scroll(request)
            if following is not None and not isinstance(following, int):
                following = str(following)
            return [_record(r) for r in records], following
        return await self._run(f"reading points of {collection!r}", scroll)

    async def retrieve(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = False,
                       with_vectors: bool = False) -> list[Record]:
        wanted: list[int | uuid.UUID | str] = [_point_id(i) for i in ids]

        def retrieve() -> list[Record]:
            found = self._shard(collection).retrieve(wanted, with_payload=with_payload, with_vector=with_vectors)
            return [_record(r) for r in found]
        return await self._run(f"reading points of {collection!r}", retrieve)

    async def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        if not query.nearest:
            raise ValueError("a query needs at least one nearest-neighbour stage")
        request = _request(query)

        def run() -> list[Record]:
            return [_record(p) for p in self._shard(collection).query(request)]
        return await self._run(f"querying {collection!r}", run)

    async def ping(self) -> None:
        # A round trip through the worker thread: it proves the thread is not stuck behind a long call.
        await self._run("health check", lambda: len(self._shards))

    async def optimize(self, collection: str) -> bool:
        """Run the engine's segment optimizers on one collection now (blocks the loop for its duration).

        Not used while serving (see the module docstring); for maintenance and benchmarks.
        """
        return await self._run(f"optimizing {collection!r}", lambda: self._shard(collection).optimize())

    async def close(self) -> None:
        """Flush and close every open shard, stop the worker thread, release the lock. Idempotent."""
        if self._closed:
            return

        def close_all() -> None:
            for name, shard in list(self._shards.items()):
                try:
                    shard.flush()
                    shard.close()
                except Exception:
                    log.exception("closing Qdrant Edge collection %s failed", name)
            self._shards.clear()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, close_all)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
