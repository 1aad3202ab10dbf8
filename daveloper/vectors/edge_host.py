"""The Qdrant Edge engine process: the shards, and the calls :class:`~daveloper.vectors.edge.EdgeEngine` sends it.

Qdrant Edge holds the GIL for the whole of every call (13 s for an
``optimize()`` at 100k points, ~1 s to load a large shard), so whatever
thread runs it, the serving process's event loop would wait. The shards
therefore live in this process of their own, started by ``EdgeEngine`` as
``python -m daveloper.vectors.edge_host <fd>`` with one end of a socket pair:
requests ``(method, args)`` arrive one at a time, each answered before the
next is read (the engine's only client sends one at a time, which also
serialises access to the shards). Arguments and results are the plain value
types of :mod:`daveloper.vectors.model`; Edge's own classes never cross.

Answers: ``("ok", value)``; ``("error", class name, message, reason)`` for a
:class:`~daveloper.errors.DaveloperError`; ``("engine", message)`` for the plain
``Exception`` Edge raises; ``("raise", exception)`` for anything else (a bug).

Every collection is configured for cheap maintenance (:func:`tuning`): no
HNSW graph (``m=0``: building one takes minutes at 100k points) but int8
scalar quantization of dense vectors, which makes a brute-force scan of an
optimized segment about 3 times faster; segments are optimized in steps by
:meth:`ShardHost.maintain`, which the engine calls after every 16k points written
and when idle.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from daveloper.errors import AlreadyExists, DaveloperError, NotFound
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
    ShardStats,
    Sparse,
    SparseParams,
)

__all__ = ["CONFIG_FILE", "NAME", "RRF_K", "ShardHost", "tuning"]

#: Reciprocal rank fusion constant: Qdrant server's default, so both engines rank alike.
RRF_K = 2
#: The file Edge persists a shard's configuration in.
CONFIG_FILE = "edge_config.json"
#: Usable collection names (they are directory names).
NAME = r"[A-Za-z0-9_-]{1,200}"
_DISTANCES = {Distance.COSINE: qe.Distance.Cosine, Distance.DOT: qe.Distance.Dot, Distance.EUCLID: qe.Distance.Euclid}
_DISTANCE_NAMES = {"cosine": Distance.COSINE, "dot": Distance.DOT, "euclid": Distance.EUCLID}
#: Segments below this much vector data (KB) stay appendable and unquantized (~650 points of 384 dimensions).
INDEXING_THRESHOLD_KB = 1_000
#: Merges stop at this much vector data per segment (KB; ~40k points of 384 dimensions), so a step stays bounded.
MAX_SEGMENT_KB = 64_000
#: Candidates taken on int8 scores per result wanted, then rescored with the float vectors.
OVERSAMPLING = 2.0
#: Segments kept before small ones are merged. Each query visits every segment: at 100k points, 24
#: segments doubled sparse query time against 4 (measured: p50 3.5 ms against 1.5 ms). A merge holds
#: its sources and its result in memory at once: with 8 the engine process peaked at 335 MiB at 100k
#: sparse chunks against 424 MiB with 4 (steady 227 against 258), search time unchanged.
SEGMENTS = 8


def tuning(dense: dict[str, DenseParams], sparse: dict[str, SparseParams]) -> qe.EdgeConfig:
    """The shard configuration for these vectors: no HNSW graph, int8 dense vectors, bounded segments.

    Sparse indexes are held ``Memory.Cold``: in their files, paged in as queries touch them. At 100k
    chunks this took the engine process's peak from 415 to 381 MiB for a sparse search p99 of
    6.1 ms against 4.7 ms over gRPC (docs/benchmarks.md). A shard written with other settings takes
    these when it is loaded.
    """
    return qe.EdgeConfig(
        vectors={n: qe.EdgeVectorParams(p.size, _DISTANCES[p.distance]) for n, p in dense.items()},
        sparse_vectors={n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if p.idf else None,
                                                     memory=qe.Memory.Cold)
                        for n, p in sparse.items()},
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB,
                                           max_segment_size=MAX_SEGMENT_KB, default_segment_number=SEGMENTS),
    )


def _index(kind: IndexKind) -> Any:
    if kind is IndexKind.TENANT:
        return qe.KeywordIndexParams(is_tenant=True)
    return qe.PayloadSchemaType.Integer if kind is IndexKind.INTEGER else qe.PayloadSchemaType.Keyword


def _condition(condition: Condition) -> qe.FieldCondition:
    if isinstance(condition, Match):
        return qe.FieldCondition(condition.key, match=qe.MatchValue(condition.value))
    if isinstance(condition, MatchAny):
        return qe.FieldCondition(condition.key, match=qe.MatchAny(list(condition.values)))
    if isinstance(condition, MatchExcept):
        return qe.FieldCondition(condition.key, match=qe.MatchExcept(list(condition.values)))
    return qe.FieldCondition(condition.key, range=qe.RangeFloat(gte=condition.gte, lt=condition.lt))


def _filter(where: Filter | None) -> qe.Filter | None:
    return qe.Filter(must=[_condition(c) for c in where]) if where else None


def _vector(vector: Sequence[float] | Sparse) -> Any:
    if isinstance(vector, Sparse):
        return qe.SparseVector(list(vector.indices), list(vector.values))
    return list(vector)


def _nearest(nearest: Nearest) -> tuple[qe.Query, qe.SearchParams | None]:
    params = None
    if nearest.idf_corpus is not None:
        params = qe.SearchParams(idf=qe.IdfParams(corpus=_filter(nearest.idf_corpus)))
    elif not isinstance(nearest.vector, Sparse):
        # int8 scores pick the candidates, the stored float vectors rank them: same order as before optimization.
        params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))
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


def _index_kinds(schema: dict[str, qe.PayloadIndexInfo]) -> dict[str, IndexKind]:
    kinds = {}
    for field, info in schema.items():
        if info.data_type == qe.PayloadSchemaType.Integer:
            kinds[field] = IndexKind.INTEGER
        elif info.data_type == qe.PayloadSchemaType.Keyword:
            tenant = isinstance(info.params, qe.KeywordIndexParams) and bool(info.params.is_tenant)
            kinds[field] = IndexKind.TENANT if tenant else IndexKind.KEYWORD
    return kinds


def _vectors(path: Path) -> tuple[dict[str, DenseParams], dict[str, SparseParams]]:
    """A shard's vectors, from the configuration the engine persists next to its segments."""
    config = json.loads((path / CONFIG_FILE).read_text())
    dense = {name: DenseParams(size=int(v["size"]), distance=_DISTANCE_NAMES[str(v["distance"]).lower()])
             for name, v in (config.get("vectors") or {}).items()}
    sparse = {name: SparseParams(idf=str((v or {}).get("modifier") or "").lower() == "idf")
              for name, v in (config.get("sparse_vectors") or {}).items()}
    return dense, sparse


class ShardHost:
    """The shards under ``root``, opened lazily; one method per engine call (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._shards: dict[str, qe.EdgeShard] = {}

    def _shard(self, collection: str) -> qe.EdgeShard:
        shard = self._shards.get(collection)
        if shard is None:
            path = self.root / collection
            if not (path / CONFIG_FILE).is_file():
                raise NotFound(f"collection {collection!r} not found", reason="COLLECTION_NOT_FOUND")
            # Loading with the tuning moves a shard from an earlier version onto it (kept on disk).
            shard = self._shards[collection] = qe.EdgeShard.load(str(path), tuning(*_vectors(path)))
        return shard

    def list_collections(self) -> list[str]:
        """Collection names: directories holding a shard configuration."""
        return sorted(p.name for p in self.root.iterdir() if re.fullmatch(NAME, p.name) and (p / CONFIG_FILE).is_file())

    def describe(self, collection: str) -> CollectionInfo:
        """A shard's vectors, payload indexes and point count."""
        info = self._shard(collection).info()
        dense, sparse = _vectors(self.root / collection)
        return CollectionInfo(dense=dense, sparse=sparse, points=info.points_count,
                              indexes=_index_kinds(info.payload_schema))

    def create_collection(self, collection: str, spec: CollectionSpec) -> None:
        """Create a shard with ``spec``'s vectors and payload indexes."""
        path = self.root / collection
        if (path / CONFIG_FILE).is_file():
            raise AlreadyExists(f"collection {collection!r} already exists", reason="COLLECTION_EXISTS")
        shutil.rmtree(path, ignore_errors=True)  # what a create that crashed half-way left
        shard = qe.EdgeShard.create(str(path), tuning(dict(spec.dense), dict(spec.sparse)))
        try:
            for field, kind in spec.indexes.items():
                shard.update(qe.UpdateOperation.create_field_index(field, _index(kind)))
            shard.flush()
        except BaseException:
            shard.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        self._shards[collection] = shard

    def create_index(self, collection: str, field: str, kind: IndexKind) -> None:
        """Index a payload field."""
        self._shard(collection).update(qe.UpdateOperation.create_field_index(field, _index(kind)))

    def drop_collection(self, collection: str) -> bool:
        """Close and delete a shard; ``False`` if there was none."""
        path = self.root / collection
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

    def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        """Store one batch of points (ids already normalised by the engine)."""
        self._shard(collection).update(qe.UpdateOperation.upsert_points([
            qe.Point(p.id, {name: _vector(v) for name, v in p.vectors.items()}, dict(p.payload)) for p in points
        ]))

    def delete_points(self, collection: str, ids: Sequence[PointId]) -> None:
        """Delete points by id."""
        self._shard(collection).update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_where(self, collection: str, where: Filter) -> None:
        """Delete the points matching ``where``."""
        selector = _filter(where) or qe.Filter(must=[])
        self._shard(collection).update(qe.UpdateOperation.delete_points_by_filter(selector))

    def count(self, collection: str, where: Filter) -> int:
        """Points matching ``where``, exactly."""
        return self._shard(collection).count(qe.CountRequest(exact=True, filter=_filter(where)))

    def scroll(self, collection: str, where: Filter, limit: int, offset: PointId | None,
               with_vectors: bool) -> tuple[list[Record], PointId | None]:
        """A page of points and the next page's offset."""
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=_filter(where), with_payload=True,
                                   with_vector=with_vectors)
        records, following = self._shard(collection).scroll(request)
        if following is not None and not isinstance(following, int):
            following = str(following)
        return [_record(r) for r in records], following

    def retrieve(self, collection: str, ids: Sequence[PointId], with_payload: bool,
                 with_vectors: bool) -> list[Record]:
        """The points among ``ids`` that exist."""
        wanted: list[int | uuid.UUID | str] = list(ids)
        found = self._shard(collection).retrieve(wanted, with_payload=with_payload, with_vector=with_vectors)
        return [_record(r) for r in found]

    def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        """Run a query."""
        return [_record(p) for p in self._shard(collection).query(_request(query))]

    def stats(self, collection: str) -> ShardStats:
        """Segments, live points and indexed vectors of a shard."""
        info = self._shard(collection).info()
        return ShardStats(segments=info.segments_count, points=info.points_count,
                          indexed_vectors=info.indexed_vectors_count)

    def maintain(self, collection: str) -> ShardStats:
        """Run the shard's optimizers until none has work left (quantize, merge, reclaim deleted points)."""
        shard = self._shard(collection)
        shard.optimize()
        shard.flush()
        return self.stats(collection)

    def ping(self) -> int:
        """Open shards (a round trip that proves the process answers)."""
        return len(self._shards)

    def close(self) -> None:
        """Flush and close every shard."""
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()


def serve(connection: Connection, host: ShardHost) -> None:
    """Answer requests until ``close`` or until the engine's end of the connection closes."""
    while True:
        try:
            method, args = connection.recv()
        except EOFError:  # the serving process is gone: flush what we have and leave
            host.close()
            return
        try:
            answer: tuple[Any, ...] = ("ok", getattr(host, method)(*args))
        except DaveloperError as exc:  # its reason would not survive pickling
            answer = ("error", type(exc).__name__, exc.message, exc.reason)
        except Exception as exc:
            answer = ("engine", str(exc)) if type(exc) is Exception else ("raise", exc)
        connection.send(answer)
        if method == "close":
            return


def main() -> None:
    """Entry point: ``python -m daveloper.vectors.edge_host <socket fd> <root>``."""
    connection = Connection(socket.socket(fileno=int(sys.argv[1])).detach())
    serve(connection, ShardHost(Path(sys.argv[2])))


if __name__ == "__main__":
    main()
