"""Replacing a document with a new version: searches switch from the old version to the new at one instant.

The steps, for new content with the identity of a stored document (see
:func:`~daveloper.documents.catalog.document_id_for`)::

    stage     the new ingestion id joins the session's hidden set      (its points stay out of searches)
    write     the new version's chunks, under their own point ids      (the old version is still what searches see)
    commit    one Redis script: the record becomes the new version, the new ingestion leaves the hidden
              set and the old one joins it, the session's document counter is bumped
    clean up  the old version's points are deleted, then the old ingestion leaves the hidden set

A search reads the hidden set and its epoch, queries, and reads the epoch
again; if the set changed meanwhile it searches again (``documents/search.py``),
so it never sees both versions, nor neither. A replacement that fails before
its commit removes its own points (:func:`discard_version`) and leaves the old
version as it was.
"""

from __future__ import annotations

import asyncio
import datetime

from daveloper.documents.catalog import Catalog, document_id_for
from daveloper.documents.model import Hit
from daveloper.documents.store import ChunkStore
from daveloper.errors import FailedPrecondition
from generated.daveloper.v1 import Document

__all__ = ["commit_version", "current_chunks", "discard_version", "document_id_of"]

#: Reads of a document's current version that retry when a new version replaced it between the two reads.
_CURRENT_READS = 3


async def document_id_of(catalog: Catalog, session_id: str, content_hash: str, *, client_document_id: str = "",
                         source_uri: str = "") -> str:
    """The id of the document that content with this identity is a version of.

    :func:`~daveloper.documents.catalog.document_id_for`, except for a client id the catalog already
    maps to a document: that document keeps its id. Documents stored before versions had ids
    derived from their content, a client id mapped to one; new content for that client id replaces
    it (as its version 2) instead of becoming a second document beside it, and the client keeps the
    id it knew. A migration done lazily, one document at its next upload, with no pass over the data.
    (Crawled pages of that time were not indexed by their URL: there is nothing to find them by.
    A changed page stores a new document, and its old copy goes with the session or its deletion.)
    """
    if client_document_id:
        mapped = await catalog.find_by_client_id(session_id, client_document_id)
        if mapped is not None:
            return str(mapped.id)
    return document_id_for(session_id, content_hash, client_document_id=client_document_id, source_uri=source_uri)


async def commit_version(catalog: Catalog, store: ChunkStore, session_id: str, draft: Document, *,
                         replacing: Document | None) -> Document:
    """Make ``draft`` (written under ``draft.ingestion_id``, staged hidden) the document's current version.

    ``replacing`` is the version the ingestion found when it started (None for a new document).
    Returns the stored record: the new version, or the current one when a concurrent ingestion
    stored identical content first (this one's points are then removed). FAILED_PRECONDITION
    (``DOCUMENT_DELETED``) if the document was deleted while the new version was being written.
    """
    while True:
        current, raw = await catalog.current(session_id, draft.id)
        if current is not None and current.content_hash == draft.content_hash:
            await discard_version(catalog, store, session_id, draft.ingestion_id)
            return current  # the same content arrived twice at once: one version, not two
        if current is None and replacing is not None:
            raise FailedPrecondition(f"document {draft.id} was deleted while a new version was being stored",
                                     reason="DOCUMENT_DELETED")
        now = datetime.datetime.now(datetime.UTC)
        version = Document.parse(bytes(draft))
        version.update_time = now
        if current is None:
            version.version, version.create_time = 1, now
        else:
            # A record from before versions has version 0: it was the first.
            version.version, version.create_time = max(current.version, 1) + 1, current.create_time or now
        if await catalog.commit(session_id, version, raw):
            break
        # Another version was committed (or the document deleted) since we read it: look again.
    if current is not None:
        # The old version is hidden now; its points can go. (A record from before versions names no
        # ingestion: everything of the document but the new version goes.)
        await asyncio.shield(_remove_replaced(catalog, store, session_id, current, keep=version.ingestion_id))
    return version


async def _remove_replaced(catalog: Catalog, store: ChunkStore, session_id: str, replaced: Document, *,
                           keep: str) -> None:
    if replaced.ingestion_id:
        await discard_version(catalog, store, session_id, replaced.ingestion_id)
    else:
        await store.delete_document(session_id, replaced.id, keep=keep)


async def discard_version(catalog: Catalog, store: ChunkStore, session_id: str, ingestion_id: str) -> None:
    """Delete the points a hidden ingestion wrote, then stop hiding it (there is nothing left to hide).

    An ingestion that is not hidden wrote nothing (it failed before it was staged) or is its
    document's current version (it was committed, and was cancelled or failed just after): its
    points stay, since the catalog's record points at them.
    """
    if not await catalog.is_hidden(session_id, ingestion_id):
        return
    await store.delete_ingestion(session_id, ingestion_id)
    await catalog.release(session_id, ingestion_id)


async def current_chunks(catalog: Catalog, store: ChunkStore, session_id: str, document_id: str,
                         limit: int) -> list[Hit]:
    """The first ``limit`` chunks of the document's current version; none if the document is gone.

    Read by the ingestion id its record names, the version searches see: the points of a version
    being written beside it (staged, hidden) or of one it replaced (hidden until deleted) are never
    mixed in. If a new version became current between the record and the points, they are read again.
    """
    hits: list[Hit] = []
    for _ in range(_CURRENT_READS):
        document = await catalog.find(session_id, document_id)
        if document is None:
            return []
        # A record from before versions names no ingestion: its points are the document's only ones.
        hits = await store.chunks(session_id, document_id, limit=limit, ingestion_id=document.ingestion_id)
        if hits:
            return hits
        now = await catalog.find(session_id, document_id)
        if now is None or now.ingestion_id == document.ingestion_id:
            return hits
    return hits
