"""The data that flows through ingestion and search, and the seams between its stages.

::

    bytes ──parse──► ParsedDocument ──chunk──► [ChunkDraft] ──embed──► [Vectors] ──store──► Qdrant
                                                               query ──embed──► Vectors ──search──► [Hit]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

__all__ = [
    "Block",
    "BlockKind",
    "ChunkDraft",
    "Embedder",
    "Hit",
    "ParsedDocument",
    "SearchMode",
    "SparseVector",
    "Vectors",
]


class BlockKind(Enum):
    """What a block of a parsed document is; the chunker treats each kind differently."""

    HEADING = "heading"
    PARAGRAPH = "paragraph"
    LIST = "list"
    TABLE = "table"
    CODE = "code"  # a code block in prose, or a unit (function, class, blank-line block) of a source file


@dataclass(frozen=True, slots=True)
class Block:
    """One structural unit of a document, with where it came from."""

    kind: BlockKind
    text: str
    #: Headings enclosing this block, outermost first (for a heading: its parents).
    heading_path: tuple[str, ...] = ()
    #: 1-based page for paginated formats, else 0.
    page: int = 0
    #: 1-based inclusive line range in the source text, else 0.
    start_line: int = 0
    end_line: int = 0
    #: Heading level (1-6) for HEADING blocks, else 0.
    level: int = 0


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """A document reduced to ordered blocks of text."""

    #: The media type after sniffing, e.g. ``text/markdown``, ``application/pdf``, ``text/x-python``.
    media_type: str
    blocks: tuple[Block, ...]
    title: str = ""
    #: Programming language for source code (``python``, ``go``, ...), else "".
    language: str = ""


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk before it is embedded and stored."""

    index: int
    text: str
    token_count: int
    heading_path: tuple[str, ...] = ()
    page: int = 0
    start_line: int = 0
    end_line: int = 0


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Vectors:
    """The vectors of one text: sparse (BM25) and/or dense."""

    sparse: SparseVector | None = None
    dense: tuple[float, ...] | None = None


class SearchMode(Enum):
    SPARSE = "sparse"
    DENSE = "dense"
    HYBRID = "hybrid"


class Embedder(Protocol):
    """Turns texts into vectors. Implementations: bm25 (default), openai, minilm."""

    #: Stable name stored with the points, e.g. ``"bm25"`` or ``"openai:text-embedding-3-small"``.
    name: str
    #: Size of dense vectors, or ``None`` for a sparse-only embedder.
    dense_size: int | None

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]: ...

    async def embed_query(self, text: str) -> Vectors: ...


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a stored chunk and its score."""

    chunk_id: str
    document_id: str
    index: int
    text: str
    score: float
    token_count: int = 0
    heading_path: tuple[str, ...] = ()
    page: int = 0
    start_line: int = 0
    end_line: int = 0
    document_name: str = ""
    source_uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
