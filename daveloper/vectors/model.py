"""The vector store seam: what Daveloper asks of a vector engine, in its own words.

:class:`VectorEngine` is the interface :class:`~daveloper.documents.store.ChunkStore`
and ``VectorService`` are written against. Two implementations:

* :class:`~daveloper.vectors.edge.EdgeEngine`: Qdrant Edge, Qdrant's engine as a
  library, in an engine process of the server's own, one shard per collection
  under the data dir (the embedded default);
* :class:`~daveloper.vectors.remote.RemoteEngine`: qdrant-client's
  ``AsyncQdrantClient`` against a Qdrant server or cluster (``DAVELOPER_QDRANT_URL``).

The value types below are plain frozen dataclasses, so callers never touch an
engine's own model classes and the conformance suite can run the same calls
against both. Errors are Daveloper's: a missing collection is
:class:`~daveloper.errors.NotFound` (reason ``COLLECTION_NOT_FOUND``), an
existing one :class:`~daveloper.errors.AlreadyExists`, a vector that does not
fit the collection :class:`~daveloper.errors.InvalidArgument`, an engine that
cannot answer :class:`~daveloper.errors.Unavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

__all__ = [
    "CollectionInfo",
    "CollectionSpec",
    "Condition",
    "DenseParams",
    "Distance",
    "Filter",
    "IndexKind",
    "Match",
    "MatchAny",
    "MatchExcept",
    "Nearest",
    "PointData",
    "PointId",
    "PointQuery",
    "Range",
    "Record",
    "ShardStats",
    "Sparse",
    "SparseParams",
    "VectorEngine",
]

#: A point id: an unsigned integer, or a UUID in its text form.
PointId = int | str


class Distance(Enum):
    """How dense vectors are compared."""

    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"


class IndexKind(Enum):
    """A payload index: keyword, keyword marking the tenant (Qdrant co-locates a tenant's points), integer."""

    KEYWORD = "keyword"
    TENANT = "tenant"
    INTEGER = "integer"


@dataclass(frozen=True, slots=True)
class DenseParams:
    """A named dense vector of ``size`` dimensions."""

    size: int
    distance: Distance = Distance.COSINE


@dataclass(frozen=True, slots=True)
class SparseParams:
    """A named sparse vector; ``idf`` weights query terms by their document frequency at query time."""

    idf: bool = False


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """What a collection holds: named dense and sparse vectors, and payload indexes by field."""

    dense: Mapping[str, DenseParams] = field(default_factory=dict)
    sparse: Mapping[str, SparseParams] = field(default_factory=dict)
    indexes: Mapping[str, IndexKind] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """An existing collection: its vectors and how many points it holds."""

    dense: Mapping[str, DenseParams]
    sparse: Mapping[str, SparseParams]
    points: int
    #: Payload indexes the engine reports (qdrant-client's local mode keeps none).
    indexes: Mapping[str, IndexKind] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sparse:
    """A sparse vector: unique ``indices`` and their ``values``."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Match:
    """The payload field ``key`` equals ``value`` (a quoted segment such as ``'a."b.c"'`` names a key with dots)."""

    key: str
    value: str | int


@dataclass(frozen=True, slots=True)
class MatchAny:
    """The payload field ``key`` equals one of ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MatchExcept:
    """The payload field ``key`` equals none of ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """``gte <= key < lt`` on a numeric payload field (a missing bound is open)."""

    key: str
    gte: float | None = None
    lt: float | None = None


Condition = Match | MatchAny | MatchExcept | Range
#: Conditions that must all hold (an empty tuple matches every point).
Filter = tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class PointData:
    """A point to store: its id, named vectors (dense as a sequence, sparse as :class:`Sparse`), payload."""

    id: PointId
    vectors: Mapping[str, Sequence[float] | Sparse]
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """A stored point as read back: id in text form, payload, score (0 outside queries), vectors if asked."""

    id: str
    payload: dict[str, Any]
    score: float = 0.0
    vectors: dict[str, list[float] | Sparse] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShardStats:
    """How an embedded collection is laid out: segments, live points, vectors in optimized (indexed) form."""

    segments: int
    points: int
    indexed_vectors: int


@dataclass(frozen=True, slots=True)
class Nearest:
    """Nearest neighbours of ``vector`` among the named vector ``using``.

    ``idf_corpus`` (sparse IDF vectors only) limits the points whose document
    frequencies weight the query terms, e.g. to one session's.
    """

    using: str
    vector: Sequence[float] | Sparse
    idf_corpus: Filter | None = None


@dataclass(frozen=True, slots=True)
class PointQuery:
    """A query: one :class:`Nearest` ranks directly; several are each prefetched ``depth`` deep and fused with RRF.

    ``where`` applies to every stage.
    """

    nearest: tuple[Nearest, ...]
    limit: int
    where: Filter = ()
    depth: int = 0
    with_payload: bool = True
    with_vectors: bool = False


class VectorEngine(Protocol):
    """Collections of points with named dense and sparse vectors (see the module docstring)."""

    #: ``"qdrant-edge"`` or ``"qdrant"``: for logs and health.
    kind: str

    async def list_collections(self) -> list[str]:
        """Names of every collection."""
        ...

    async def describe(self, collection: str) -> CollectionInfo:
        """The collection's vectors and point count (``NotFound`` if it does not exist)."""
        ...

    async def create_collection(self, collection: str, spec: CollectionSpec) -> None:
        """Create the collection with its payload indexes (``AlreadyExists`` if it exists)."""
        ...

    async def create_index(self, collection: str, field: str, kind: IndexKind) -> None:
        """Index the payload field ``field`` of an existing collection (a no-op if it is indexed alike)."""
        ...

    async def drop_collection(self, collection: str) -> bool:
        """Delete the collection and its points; ``False`` if there was none."""
        ...

    async def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        """Store points, replacing any with the same ids; sent in bounded batches."""
        ...

    async def delete_points(self, collection: str, ids: Sequence[PointId]) -> None:
        """Delete the points with these ids (missing ones are ignored)."""
        ...

    async def delete_where(self, collection: str, where: Filter) -> None:
        """Delete every point matching ``where``."""
        ...

    async def count(self, collection: str, where: Filter = ()) -> int:
        """How many points match ``where`` (exactly)."""
        ...

    async def scroll(self, collection: str, where: Filter = (), *, limit: int, offset: PointId | None = None,
                     with_vectors: bool = False) -> tuple[list[Record], PointId | None]:
        """A page of points matching ``where`` from ``offset`` on, and the next page's offset (``None`` at the end)."""
        ...

    async def retrieve(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = False,
                       with_vectors: bool = False) -> list[Record]:
        """The points among ``ids`` that exist."""
        ...

    async def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        """The best ``query.limit`` points, best first."""
        ...

    async def ping(self) -> None:
        """Return when the engine answers (a health probe times it)."""
        ...

    async def close(self) -> None:
        """Flush what is pending and release the engine's resources."""
        ...
