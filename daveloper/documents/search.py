"""``DocumentSearch``: the one way in-process code searches a session's documents.

Both the agent's ``search_documents`` tool and ``DocumentService.Search`` call
it, so validation, defaults and limits are the same for a model and a client.

With a catalog it sees exactly one version of every document: it leaves out
the ingestions the catalog hides (versions being written, versions replaced
but not yet deleted), and searches again if the hidden set changed while it
ran — a version committed (or its predecessor deleted) between reading the set
and querying could otherwise show both versions, or neither (see
``documents/versions.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from daveloper.documents.catalog import Catalog
from daveloper.documents.model import Embedder, Hit, SearchMode
from daveloper.documents.store import ChunkStore
from daveloper.errors import FailedPrecondition, InvalidArgument

__all__ = ["MAX_QUERY_CHARS", "DocumentSearch"]

#: Longer queries are refused: they are documents, not questions, and would dominate a dense batch.
MAX_QUERY_CHARS = 4096
_MAX_DOCUMENT_IDS = 100
_MAX_METADATA_FILTERS = 16
_MAX_METADATA_CHARS = 256
#: Searches run again at most this many times while documents change under them; the last result stands.
_MAX_ATTEMPTS = 4


class DocumentSearch:
    """Embeds a query and searches one session's chunks with it.

    ``top_k`` 0 means ``default_top_k``; larger than ``max_top_k`` is capped,
    not refused (the contract says "capped by the server").
    """

    def __init__(self, store: ChunkStore, embedder: Embedder, *, default_top_k: int = 8,
                 max_top_k: int = 50, catalog: Catalog | None = None) -> None:
        if not 0 < default_top_k <= max_top_k:
            raise ValueError("need 0 < default_top_k <= max_top_k")
        self._store = store
        #: Which versions are current; without it every stored point is searched.
        self._catalog = catalog
        self._embedder = embedder
        self.default_top_k = default_top_k
        self.max_top_k = max_top_k

    @property
    def dense_available(self) -> bool:
        """Whether the embedder makes dense vectors (so DENSE and HYBRID modes work)."""
        return self._embedder.dense_size is not None

    def default_mode(self) -> SearchMode:
        """Hybrid when dense vectors are available, else sparse."""
        return SearchMode.HYBRID if self.dense_available else SearchMode.SPARSE

    async def search(
        self,
        session_id: str,
        query: str,
        *,
        top_k: int = 0,
        mode: SearchMode | None = None,
        document_ids: Sequence[str] = (),
        metadata_filter: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """The session's chunks most relevant to ``query``, best first.

        Raises ``InvalidArgument`` for an empty or oversized query or bad
        filters, and ``FailedPrecondition`` (reason ``DENSE_UNAVAILABLE``) for
        DENSE or HYBRID without a dense embedder.
        """
        metadata_filter = metadata_filter or {}
        self._validate(query, top_k, document_ids, metadata_filter)
        mode = mode or self.default_mode()
        if mode is not SearchMode.SPARSE and not self.dense_available:
            raise FailedPrecondition(
                f"{mode.value} search needs dense embeddings, and this server computes sparse (BM25) only",
                reason="DENSE_UNAVAILABLE",
                metadata={"embedder": self._embedder.name},
            )
        top_k, document_ids = min(top_k or self.default_top_k, self.max_top_k), tuple(dict.fromkeys(document_ids))
        if self._catalog is None:
            vectors = await self._embedder.embed_query(query)
            return await self._store.search(session_id, vectors, top_k=top_k, mode=mode, document_ids=document_ids,
                                            metadata_filter=metadata_filter)
        # The first read of the hidden set is in flight while the query is embedded.
        visible = asyncio.ensure_future(self._catalog.visibility(session_id))
        try:
            vectors = await self._embedder.embed_query(query)
            epoch, hidden = await visible
        finally:
            visible.cancel()
        for attempt in range(_MAX_ATTEMPTS):
            if attempt:
                epoch, hidden = await self._catalog.visibility(session_id)
            hits = await self._store.search(session_id, vectors, top_k=top_k, mode=mode, document_ids=document_ids,
                                            metadata_filter=metadata_filter, hidden=hidden)
            if await self._catalog.epoch(session_id) == epoch:
                break  # no version became visible or hidden while the query ran
        return hits

    @staticmethod
    def _validate(query: str, top_k: int, document_ids: Sequence[str], metadata_filter: Mapping[str, str]) -> None:
        violations: list[tuple[str, str]] = []
        if not query.strip():
            violations.append(("query", "must not be empty"))
        elif len(query) > MAX_QUERY_CHARS:
            violations.append(("query", f"at most {MAX_QUERY_CHARS} characters"))
        if top_k < 0:
            violations.append(("top_k", "must not be negative"))
        if len(document_ids) > _MAX_DOCUMENT_IDS:
            violations.append(("document_ids", f"at most {_MAX_DOCUMENT_IDS}"))
        violations.extend((f"document_ids[{i}]", "must not be empty") for i, d in enumerate(document_ids) if not d)
        if len(metadata_filter) > _MAX_METADATA_FILTERS:
            violations.append(("metadata_filter", f"at most {_MAX_METADATA_FILTERS} entries"))
        for key, value in metadata_filter.items():
            if not key or '"' in key or "\\" in key or len(key) + len(value) > _MAX_METADATA_CHARS:
                violations.append((f"metadata_filter[{key!r}]",
                                   f'key must be non-empty without " or \\, key+value at most '
                                   f"{_MAX_METADATA_CHARS} characters"))
        if violations:
            raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in violations), violations=violations)
