"""Vector storage behind one interface: Qdrant Edge (an engine process), or a Qdrant server (qdrant-client).

See :mod:`daveloper.vectors.model` for the interface and its value types;
:mod:`daveloper.infra.qdrant` opens the engine the settings ask for.
"""

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
    Range,
    Record,
    Sparse,
    SparseParams,
    VectorEngine,
)

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
    "Sparse",
    "SparseParams",
    "VectorEngine",
]
