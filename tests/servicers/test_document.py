"""DocumentService through real gRPC streams, Redis event log and Qdrant local mode."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.app import App, open_app
from daveloper.config import Settings
from generated.daveloper.v1 import (
    CancelIngestionRequest,
    CreateSessionRequest,
    DeleteDocumentRequest,
    DeleteSessionRequest,
    Document,
    DocumentServiceStub,
    GetDocumentRequest,
    GetSessionRequest,
    IngestEvent,
    IngestStage,
    ListDocumentsRequest,
    SearchMode,
    SearchRequest,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
    UploadResponse,
    WatchIngestionRequest,
)
from tests.documents import samples
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(60)

GUIDE = """# Deployment guide

Intro paragraph about running the service.

## Configuration

Set the `DAVELOPER_REDIS_URL` variable to point at a Redis server. The retention of the event log
is configured with `DAVELOPER_EVENT_RETENTION`.

## Troubleshooting

If the embedded Valkey fails to start, check that the data directory is writable.
"""

CODE = '''"""Configuration loading."""


def parse_config(text):
    """Parse KEY=VALUE lines into a dict."""
    result = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        result[key.strip()] = value.strip()
    return result


class Retrier:
    """Retries a callable with exponential backoff."""

    def __init__(self, attempts):
        self.attempts = attempts
'''



def requests(name: str, data: bytes, *, chunk_size: int = 64, **header: Any) -> list[UploadRequest]:
    first = UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data), **header))
    return [first, *(UploadRequest(chunk=data[i:i + chunk_size]) for i in range(0, len(data), chunk_size))]


async def upload(stub: DocumentServiceStub, token: str, messages: Iterable[UploadRequest]) -> list[IngestEvent]:
    return [r.event async for r in stub.upload(messages, timeout=30, metadata=bearer(token))]


def stored(events: list[IngestEvent]) -> Document:
    assert events[-1].stored is not None, events[-1]
    return events[-1].stored



@pytest.fixture
def docs(channel: Channel) -> DocumentServiceStub:
    return DocumentServiceStub(channel)


async def session_id(channel: Channel, token: str) -> str:
    return (await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                          metadata=bearer(token))).session.id


async def new_token(channel: Channel) -> str:
    return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token


async def test_upload_streams_ordered_progress_and_finds_the_right_chunk(docs: DocumentServiceStub, token: str) -> None:
    events = await upload(docs, token, requests("guide.md", GUIDE.encode()))
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert events[0].started is not None
    assert events[0].started.file_name == "guide.md"
    stages = [e.progress.stage for e in events if e.progress is not None]
    order = [IngestStage.RECEIVING, IngestStage.PARSING, IngestStage.CHUNKING, IngestStage.EMBEDDING,
             IngestStage.STORING]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == order
    done = [e.progress for e in events if e.progress is not None and e.progress.stage is IngestStage.STORING][-1]
    document = stored(events)
    assert done.done == done.total == document.chunk_count > 0
    assert (document.name, document.media_type, document.size_bytes) == ("guide.md", "text/markdown", len(GUIDE))
    assert len(document.content_hash) == 64
    assert document.token_count > 0

    found = await docs.search(SearchRequest(query="which variable points at the Redis server", top_k=3),
                              timeout=10, metadata=bearer(token))
    top = found.hits[0]
    assert "DAVELOPER_REDIS_URL" in top.chunk.text
    assert top.chunk.document_id == document.id
    assert top.chunk.location.heading_path[-1] == "Configuration"
    assert top.document_name == "guide.md"
    assert top.chunk.location.start_line >= 5


async def test_python_source_is_chunked_by_function_with_line_ranges(docs: DocumentServiceStub, token: str) -> None:
    document = stored(await upload(docs, token, requests("config.py", CODE.encode())))
    assert document.language == "python"
    found = await docs.search(SearchRequest(query="parse_config", top_k=1, mode=SearchMode.SPARSE),
                              timeout=10, metadata=bearer(token))
    location = found.hits[0].chunk.location
    lines = CODE.splitlines()
    assert lines[location.start_line - 1].startswith("def parse_config")
    assert "return result" in lines[location.end_line - 1]


async def test_identical_content_is_not_stored_twice(docs: DocumentServiceStub, token: str, app: App) -> None:
    first = stored(await upload(docs, token, requests("a.md", GUIDE.encode())))
    second = stored(await upload(docs, token, requests("copy-of-a.md", GUIDE.encode(), chunk_size=1000)))
    assert second.id == first.id
    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))
    assert [d.id for d in listed.documents] == [first.id]
    assert await app.chunk_store.count(await session_id(docs.channel, token)) == first.chunk_count


async def test_client_document_id_makes_a_retry_idempotent(docs: DocumentServiceStub, token: str) -> None:
    first = stored(await upload(docs, token, requests("a.md", GUIDE.encode(), client_document_id="c-1")))
    retry = stored(await upload(docs, token, requests("a.md", GUIDE.encode(), client_document_id="c-1")))
    assert retry.id == first.id
    assert retry.client_document_id == "c-1"


async def test_get_document_with_previews_and_delete_removes_every_point(
    docs: DocumentServiceStub, token: str, app: App
) -> None:
    document = stored(await upload(docs, token, requests("guide.md", GUIDE.encode())))
    got = await docs.get_document(GetDocumentRequest(document_id=document.id, chunk_preview_count=2),
                                  timeout=5, metadata=bearer(token))
    assert got.document.id == document.id
    assert [c.index for c in got.chunks] == list(range(min(2, document.chunk_count)))
    await docs.delete_document(DeleteDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(token))
    with pytest.raises(GRPCError) as caught:
        await docs.get_document(GetDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(token))
    assert caught.value.status is Status.NOT_FOUND
    found = await docs.search(SearchRequest(query="Redis server"), timeout=5, metadata=bearer(token))
    assert found.hits == []


async def test_another_session_cannot_see_get_delete_or_watch(docs: DocumentServiceStub, token: str,
                                                              channel: Channel) -> None:
    events = await upload(docs, token, requests("guide.md", GUIDE.encode()))
    document = stored(events)
    other = await new_token(channel)
    calls = [
        docs.get_document(GetDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(other)),
        docs.delete_document(DeleteDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(other)),
        docs.cancel_ingestion(CancelIngestionRequest(ingestion_id=events[0].ingestion_id), timeout=5,
                              metadata=bearer(other)),
    ]
    for pending in calls:
        with pytest.raises(GRPCError) as caught:
            await pending
        assert caught.value.status is Status.NOT_FOUND
    with pytest.raises(GRPCError) as caught:
        _ = [r async for r in docs.watch_ingestion(WatchIngestionRequest(ingestion_id=events[0].ingestion_id),
                                                   timeout=5, metadata=bearer(other))]
    assert caught.value.status is Status.NOT_FOUND
    found = await docs.search(SearchRequest(query="Redis server"), timeout=5, metadata=bearer(other))
    assert found.hits == []
    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(other))
    assert listed.documents == []
    # The owner still has everything.
    await docs.get_document(GetDocumentRequest(document_id=document.id), timeout=5, metadata=bearer(token))


async def test_watch_replays_an_ingestion_after_any_seq(docs: DocumentServiceStub, token: str) -> None:
    events = await upload(docs, token, requests("guide.md", GUIDE.encode()))
    ingestion = events[0].ingestion_id
    replay = [r.event async for r in docs.watch_ingestion(
        WatchIngestionRequest(ingestion_id=ingestion, after_seq=2), timeout=10, metadata=bearer(token))]
    assert [e.seq for e in replay] == [e.seq for e in events[2:]]
    assert replay[-1].stored == events[-1].stored


@pytest.mark.parametrize(
    ("messages", "status", "why"),
    [
        ([UploadRequest(chunk=b"x")], Status.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ([UploadRequest(header=UploadHeader(file_name=""))], Status.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ([UploadRequest(header=UploadHeader(file_name="a.md"))], Status.INVALID_ARGUMENT, "EMPTY_DOCUMENT"),
        ([UploadRequest(header=UploadHeader(file_name="a.md")), UploadRequest(chunk=b"# x"),
          UploadRequest(header=UploadHeader(file_name="b.md"))], Status.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ([UploadRequest(header=UploadHeader(file_name="a.md", size_bytes=1 << 40))],
         Status.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE"),
    ],
)
async def test_bad_uploads_fail_with_a_clear_status(
    docs: DocumentServiceStub, token: str, messages: list[UploadRequest], status: Status, why: str
) -> None:
    with pytest.raises(GRPCError) as caught:
        await upload(docs, token, messages)
    assert caught.value.status is status
    assert reason(caught.value) == why


async def test_upload_over_the_limit_fails_and_stores_nothing(docs: DocumentServiceStub, token: str, app: App) -> None:
    limit = app.settings.max_upload_bytes
    big = b"word " * (limit // 5 + 10)
    messages = requests("big.txt", big, chunk_size=1 << 20)
    messages[0].header.size_bytes = 0  # an unknown size: the limit is enforced while receiving
    with pytest.raises(GRPCError) as caught:
        await upload(docs, token, messages)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))
    assert listed.documents == []


async def test_cancel_mid_ingestion_leaves_no_points(docs: DocumentServiceStub, token: str, app: App) -> None:
    text = "\n\n".join(f"## Section {i}\n\nParagraph {i} about topic number {i} and more words." for i in range(3000))
    stream_events: list[IngestEvent] = []

    async def run() -> None:
        async for response in docs.upload(requests("long.md", text.encode(), chunk_size=1 << 16), timeout=60,
                                          metadata=bearer(token)):
            stream_events.append(response.event)
            if response.event.progress is not None and response.event.progress.stage is IngestStage.EMBEDDING:
                await docs.cancel_ingestion(CancelIngestionRequest(ingestion_id=response.event.ingestion_id),
                                            timeout=5, metadata=bearer(token))

    with pytest.raises(GRPCError) as caught:
        await run()
    assert caught.value.status is Status.CANCELLED
    assert stream_events[-1].failed is not None
    assert stream_events[-1].failed.reason == "CANCELLED"
    listed = await docs.list_documents(ListDocumentsRequest(), timeout=5, metadata=bearer(token))
    assert listed.documents == []
    found = await docs.search(SearchRequest(query="topic number"), timeout=5, metadata=bearer(token))
    assert found.hits == []


async def test_deleting_the_session_purges_its_documents(docs: DocumentServiceStub, token: str, app: App,
                                                        channel: Channel) -> None:
    document = stored(await upload(docs, token, requests("guide.md", GUIDE.encode())))
    owner = await session_id(channel, token)
    assert await app.chunk_store.count(owner) == document.chunk_count
    await SessionServiceStub(channel).delete_session(DeleteSessionRequest(), timeout=5, metadata=bearer(token))
    assert await app.chunk_store.count(owner) == 0
    assert await app.catalog.document_ids(owner) == []



async def test_ingestion_outlives_its_client_and_is_watched_from_another_instance(
    docs: DocumentServiceStub, token: str, settings: Settings
) -> None:
    text = "\n\n".join(f"## Part {i}\n\nBody text {i} with several words in it." for i in range(400))
    async with docs.channel.request(
        "/daveloper.v1.DocumentService/Upload", Cardinality.STREAM_STREAM, UploadRequest, UploadResponse,
        timeout=30, metadata=bearer(token),
    ) as stream:
        for message in requests("parts.md", text.encode(), chunk_size=4096):
            await stream.send_message(message)
        await stream.end()
        first = (await stream.recv_message()).event
        await stream.cancel()  # the client leaves as soon as the upload is complete

    # A second instance sharing the Redis (but not this one's data dir) serves the watch.
    other = settings.replace(data_dir=settings.data_dir.parent / "other-instance", instance_id="other")
    async with open_app(other) as second:
        channel = Channel(second.grpc_addr.host, second.grpc_addr.port)
        try:
            watched = [r.event async for r in DocumentServiceStub(channel).watch_ingestion(
                WatchIngestionRequest(ingestion_id=first.ingestion_id), timeout=30, metadata=bearer(token))]
        finally:
            channel.close()
    assert [e.seq for e in watched] == list(range(1, len(watched) + 1))
    assert watched[-1].stored is not None
    assert watched[-1].stored.name == "parts.md"


@pytest.mark.parametrize(
    ("name", "data", "query", "media_type", "expect_text", "expect_location"),
    [
        ("notes.pdf", samples.pdf_two_pages(), "serve command client port", "application/pdf", "serve command",
         {"page": 2}),
        ("handbook.docx", samples.docx_handbook(), "roll back previous tag",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "previous tag",
         {"heading": "Rollback"}),
        ("async.html", samples.html_article().encode(), "CancelledError at the next await", "text/html",
         "never swallow it", {"heading": "Task groups"}),  # its small h3 subsection joins the h2 chunk
        ("guide.md", samples.markdown_guide().encode(), None, "text/markdown", None, {}),
        ("module.py", samples.python_module().encode(), None, "text/x-python", None, {}),
    ],
    ids=["pdf", "docx", "html", "markdown", "python"],
)
async def test_every_format_uploads_over_grpc_and_is_found_with_its_location(
    docs: DocumentServiceStub, token: str, name: str, data: bytes, query: str | None, media_type: str,
    expect_text: str | None, expect_location: dict[str, Any],
) -> None:
    events = await upload(docs, token, requests(name, data, chunk_size=1024))
    document = stored(events)
    assert document.media_type == media_type
    assert document.chunk_count > 0
    if query is None:
        return
    found = await docs.search(SearchRequest(query=query, top_k=1), timeout=10, metadata=bearer(token))
    hit = found.hits[0].chunk
    assert expect_text in hit.text
    if "page" in expect_location:
        assert hit.location.page == expect_location["page"]
    if "heading" in expect_location:
        assert hit.location.heading_path[-1] == expect_location["heading"]
    # The HTML page's navigation and footer are not part of what was stored.
    assert samples.NAV_TEXT not in hit.text
    assert samples.FOOTER_TEXT not in hit.text
