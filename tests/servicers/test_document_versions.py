"""Document versions: new content for the same identity replaces the document; a search sees one version."""

from __future__ import annotations

import asyncio
import re

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.app import App
from daveloper.keys import Keys
from generated.daveloper.v1 import (
    CancelIngestionRequest,
    DeleteDocumentRequest,
    DocumentServiceStub,
    GetDocumentRequest,
    IngestStage,
    ListDocumentsRequest,
    SearchMode,
    SearchRequest,
)
from tests.grpc_helpers import bearer
from tests.servicers.test_document import requests, session_id, stored, upload

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def docs(channel: Channel) -> DocumentServiceStub:
    return DocumentServiceStub(channel)


def manual(revision: int, sections: int = 30) -> bytes:
    """A document whose every chunk names the zebracorn and its revision."""
    return "\n\n".join(f"## Part {i}\n\nThe zebracorn manual, revision {revision}, part {i}: feed it {i} apples."
                       for i in range(sections)).encode()


async def revisions(stub: DocumentServiceStub, token: str, query: str = "zebracorn manual") -> set[str]:
    found = await stub.search(SearchRequest(query=query, top_k=50, mode=SearchMode.SPARSE), timeout=10,
                              metadata=bearer(token))
    return {m.group(1) for hit in found.hits if (m := re.search(r"revision (\d+)", hit.chunk.text))}


async def test_new_bytes_are_a_new_version_and_the_same_bytes_are_idempotent(docs: DocumentServiceStub, token: str,
                                                                            app: App) -> None:
    owner = await session_id(docs.channel, token)
    first = stored(await upload(docs, token, requests("m.md", manual(1), chunk_size=4096, client_document_id="m")))
    assert (first.version, first.ingestion_id, first.client_document_id) == (1, first.ingestion_id, "m")
    assert first.update_time == first.create_time
    again = stored(await upload(docs, token, requests("m.md", manual(1), chunk_size=4096, client_document_id="m")))
    assert again == first  # same bytes: same document, same version
    counter = int(await app.redis.get(app.catalog.version_key(owner)) or 0)

    second = stored(await upload(docs, token, requests("m.md", manual(2, 20), chunk_size=4096,
                                                       client_document_id="m")))
    assert (second.id, second.version, second.create_time) == (first.id, 2, first.create_time)
    assert second.update_time is not None
    assert first.update_time is not None
    assert second.update_time > first.update_time
    assert second.ingestion_id != first.ingestion_id
    # The agent's cached tool results are keyed by this counter: a replacement makes them stale.
    assert int(await app.redis.get(app.catalog.version_key(owner)) or 0) > counter

    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))
    assert listed.documents == [second]
    assert await revisions(docs, token) == {"2"}
    assert await app.chunk_store.count(owner) == second.chunk_count  # the old version's points are gone
    assert await app.catalog.usage(owner) == (1, len(manual(2, 20)))
    assert (await app.catalog.visibility(owner))[1] == []  # nothing left hidden: the old points are deleted


async def test_a_search_sees_exactly_one_version_while_the_document_is_replaced(docs: DocumentServiceStub,
                                                                                token: str) -> None:
    # Large enough that the vector engine writes a version in several batches, each searchable at once.
    sections = 700
    stored(await upload(docs, token, requests("m.md", manual(0, sections), chunk_size=1 << 16,
                                              client_document_id="m")))
    seen: list[set[str]] = []
    done = asyncio.Event()

    async def search_loop() -> None:
        while not done.is_set():
            seen.append(await revisions(docs, token))

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(search_loop())
        try:
            for revision in range(1, 4):
                document = stored(await upload(docs, token, requests("m.md", manual(revision, sections),
                                                                     chunk_size=1 << 16, client_document_id="m")))
                assert document.version == revision + 1
        finally:
            done.set()
    assert len(seen) > 10
    assert [s for s in seen if len(s) != 1] == []  # never both versions, never neither
    assert seen[-1] == {"3"}


async def test_a_failed_replacement_leaves_the_old_version(docs: DocumentServiceStub, token: str, app: App) -> None:
    first = stored(await upload(docs, token, requests("m.md", manual(1), chunk_size=4096, client_document_id="m")))
    big = "\n\n".join(f"## Part {i}\n\nThe zebracorn manual, revision 2, part {i}." for i in range(3000)).encode()

    async def replace_and_cancel() -> None:
        async for response in docs.upload(requests("m.md", big, chunk_size=1 << 16, client_document_id="m"),
                                          timeout=60, metadata=bearer(token)):
            progress = response.event.progress
            if progress is not None and progress.stage in (IngestStage.EMBEDDING, IngestStage.STORING):
                await docs.cancel_ingestion(CancelIngestionRequest(ingestion_id=response.event.ingestion_id),
                                            timeout=5, metadata=bearer(token))

    with pytest.raises(GRPCError) as caught:
        await replace_and_cancel()
    assert caught.value.status is Status.CANCELLED
    got = await docs.get_document(GetDocumentRequest(document_id=first.id, chunk_preview_count=50), timeout=5,
                                  metadata=bearer(token))
    assert got.document == first
    assert len(got.chunks) == first.chunk_count
    assert await revisions(docs, token) == {"1"}
    owner = await session_id(docs.channel, token)
    assert await app.chunk_store.count(owner) == first.chunk_count
    assert (await app.catalog.visibility(owner))[1] == []


async def test_deleting_a_replaced_document_removes_every_version(docs: DocumentServiceStub, token: str,
                                                                  app: App, channel: Channel) -> None:
    stored(await upload(docs, token, requests("m.md", manual(1), chunk_size=4096, source_uri="https://x.test/m")))
    second = stored(await upload(docs, token, requests("m.md", manual(2), chunk_size=4096,
                                                       source_uri="https://x.test/m")))
    assert second.version == 2
    await docs.delete_document(DeleteDocumentRequest(document_id=second.id), timeout=5, metadata=bearer(token))
    owner = await session_id(channel, token)
    assert await app.chunk_store.count(owner) == 0
    assert await app.catalog.usage(owner) == (0, 0)
    assert await revisions(docs, token) == set()
    assert (await app.catalog.visibility(owner))[1] == []


async def test_a_document_stored_before_versions_is_replaced_by_new_content_for_its_client_id(
        docs: DocumentServiceStub, token: str, app: App) -> None:
    # Before versions a document's id came from its content; the client id only mapped to it.
    owner = await session_id(docs.channel, token)
    legacy = stored(await upload(docs, token, requests("m.md", manual(1), chunk_size=4096)))
    legacy.client_document_id, legacy.version, legacy.ingestion_id = "m", 0, ""
    keys = Keys()
    await app.redis.set(keys.document(owner, legacy.id), bytes(legacy))
    await app.redis.hset(keys.document_clients(owner), "m", legacy.id)

    second = stored(await upload(docs, token, requests("m.md", manual(2, 20), chunk_size=4096,
                                                       client_document_id="m")))
    assert (second.id, second.version, second.client_document_id) == (legacy.id, 2, "m")  # the id it had
    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))
    assert listed.documents == [second]
    assert await revisions(docs, token) == {"2"}
    assert await app.chunk_store.count(owner) == second.chunk_count  # the legacy version's points are gone
