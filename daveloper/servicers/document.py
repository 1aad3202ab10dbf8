"""``daveloper.v1.DocumentService``: upload with live progress, list, get, delete, search."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from daveloper.audit import AuditLog
from daveloper.documents.catalog import Catalog
from daveloper.documents.ingest import Ingestion, Ingestor, ingestion_scope
from daveloper.documents.model import Hit, SearchMode
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.errors import (
    Cancelled,
    DaveloperError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    failure_error,
)
from daveloper.eventlog import EventLog
from daveloper.rpc import Authenticator, Call, Servicer
from daveloper.rpc.encoded import Encoded, wrap_event
from daveloper.servicers.heartbeat import Heartbeats, heartbeat
from generated.daveloper.v1 import (
    CancelIngestionRequest,
    CancelIngestionResponse,
    Chunk,
    DeleteDocumentRequest,
    DeleteDocumentResponse,
    DocumentServiceBase,
    GetDocumentRequest,
    GetDocumentResponse,
    IngestEvent,
    ListDocumentsRequest,
    ListDocumentsResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    SourceLocation,
    UploadHeader,
    UploadRequest,
    UploadResponse,
    WatchIngestionRequest,
)
from generated.daveloper.v1 import SearchMode as SearchModeMessage

__all__ = ["DocumentService"]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
MAX_CHUNK_PREVIEWS = 50
MAX_QUERY_CHARS = 2000
MAX_METADATA = 32
MAX_NAME_CHARS = 255

_MODES = {
    SearchModeMessage.UNSPECIFIED: None,
    SearchModeMessage.SPARSE: SearchMode.SPARSE,
    SearchModeMessage.DENSE: SearchMode.DENSE,
    SearchModeMessage.HYBRID: SearchMode.HYBRID,
}


def _location(hit: Hit) -> SourceLocation:
    return SourceLocation(heading_path=list(hit.heading_path), page=hit.page,
                          start_line=hit.start_line, end_line=hit.end_line,
                          url=hit.source_uri if hit.source_uri.startswith(("http://", "https://")) else "")


def _chunk(hit: Hit) -> Chunk:
    return Chunk(id=hit.chunk_id, document_id=hit.document_id, index=hit.index, text=hit.text,
                 token_count=hit.token_count, location=_location(hit))


def _validate_header(header: UploadHeader, max_bytes: int) -> None:
    problems: list[tuple[str, str]] = []
    if not header.file_name.strip():
        problems.append(("header.file_name", "must not be empty"))
    elif len(header.file_name) > MAX_NAME_CHARS or "/" in header.file_name or "\0" in header.file_name:
        problems.append(("header.file_name", f"must be a plain name of at most {MAX_NAME_CHARS} characters"))
    if len(header.metadata) > MAX_METADATA:
        problems.append(("header.metadata", f"at most {MAX_METADATA} entries"))
    if any(not k or len(k) + len(v) > 1024 for k, v in header.metadata.items()):
        problems.append(("header.metadata", "keys must be non-empty, key+value at most 1024 characters"))
    if len(header.client_document_id) > 128 or len(header.source_uri) > 2048:
        problems.append(("header", "client_document_id ≤ 128 and source_uri ≤ 2048 characters"))
    if problems:
        raise InvalidArgument("invalid upload header", violations=problems)
    if header.size_bytes > max_bytes:
        raise ResourceExhausted(
            f"upload of {header.size_bytes} bytes exceeds the limit of {max_bytes} bytes",
            reason="UPLOAD_TOO_LARGE", metadata={"limit_bytes": str(max_bytes)},
        )


class DocumentService(Servicer):
    base = DocumentServiceBase

    def __init__(
        self,
        *,
        auth: Authenticator,
        ingestor: Ingestor,
        catalog: Catalog,
        chunks: ChunkStore,
        search: DocumentSearch,
        events: EventLog,
        max_upload_bytes: int,
        audit: AuditLog | None = None,
        heartbeat_seconds: float = 15.0,
    ) -> None:
        super().__init__(auth=auth)
        self._heartbeat_seconds = heartbeat_seconds
        self._ingestor = ingestor
        self._catalog = catalog
        self._chunks = chunks
        self._search = search
        self._events = events
        self._max_bytes = max_upload_bytes
        self._audit = audit

    async def Upload(self, call: Call[UploadRequest, UploadResponse | Encoded]) -> None:
        if not call.session_id:
            # Only the admin token has no session; a document stored under "" would belong to nobody.
            raise FailedPrecondition("Upload stores into a session: call it with a session token",
                                     reason="SESSION_REQUIRED")
        first = await call.recv()
        header = first.header if first is not None else None
        if header is None:
            raise InvalidArgument.field("header", "the first message must carry the upload header")
        _validate_header(header, self._max_bytes)
        ingestion = Ingestion(
            id="", session_id=call.session_id, file_name=header.file_name.strip(), media_type=header.media_type,
            metadata=dict(header.metadata), client_document_id=header.client_document_id,
            source_uri=header.source_uri,
        )
        if header.size_bytes:  # refuse before receiving (a new version frees its predecessor's bytes)
            replacing = (await self._catalog.find_by_client_id(call.session_id, header.client_document_id)
                         if header.client_document_id else None)
            await self._catalog.check_quota(call.session_id, header.size_bytes, replacing=replacing)
        await self._ingestor.begin(ingestion)
        forward = asyncio.create_task(self._forward(ingestion.id, call))
        try:
            # Always received: the same bytes again return the stored document (same version), new
            # bytes for the same client_document_id or source_uri store its next version.
            try:
                async with self._ingestor.receiving(ingestion):  # NO_PROGRESS if the bytes stop coming
                    await self._receive(ingestion, call, expected=header.size_bytes)
            except DaveloperError as exc:
                await self._ingestor.fail(ingestion, exc)
            else:
                self._ingestor.process(ingestion)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                # The client left before the upload was complete: there is nothing to ingest.
                interrupted = Cancelled("the upload was interrupted", reason="UPLOAD_INTERRUPTED")
                self._ingestor.fail_later(ingestion, interrupted)
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            raise
        last = await forward
        if last.failed is not None:
            raise failure_error(last.failed)

    async def _receive(self, ingestion: Ingestion, call: Call[UploadRequest, UploadResponse | Encoded], *,
                       expected: int) -> None:
        async for request in call:
            if request.header is not None:
                raise InvalidArgument.field("header", "only the first message may carry the header")
            data = request.chunk or b""
            if len(ingestion.data) + len(data) > self._max_bytes:
                raise ResourceExhausted(
                    f"upload exceeds the limit of {self._max_bytes} bytes",
                    reason="UPLOAD_TOO_LARGE", metadata={"limit_bytes": str(self._max_bytes)},
                )
            await self._ingestor.received(ingestion, data, expected=expected)
        if not ingestion.data:
            raise InvalidArgument("the upload is empty", violations=[("chunk", "no bytes were sent")],
                                  reason="EMPTY_DOCUMENT")

    async def _forward(self, ingestion_id: str, call: Call[UploadRequest, UploadResponse | Encoded]) -> IngestEvent:
        last, delivered = b"", 0
        async with Heartbeats(call, self._heartbeat_seconds,
                              lambda: UploadResponse(heartbeat=heartbeat(delivered))) as out, \
                contextlib.aclosing(self._events.read(ingestion_scope(ingestion_id))) as entries:
            async for entry in entries:
                await out.send(wrap_event(entry.payload, entry.seq))  # an UploadResponse, from the stored bytes
                last, delivered = entry.payload, entry.seq
        return IngestEvent.parse(last)  # only the final event is decoded: did the ingestion fail?

    async def WatchIngestion(
        self, request: WatchIngestionRequest, call: Call[Any, Any]
    ) -> AsyncIterator[Encoded]:
        await self._catalog.check_ingestion(call.session_id, request.ingestion_id)
        scope = ingestion_scope(request.ingestion_id)
        async with contextlib.aclosing(self._events.read(scope, request.after_seq)) as entries:
            async for entry in entries:
                yield wrap_event(entry.payload, entry.seq)  # a WatchIngestionResponse, from the stored bytes

    async def CancelIngestion(self, request: CancelIngestionRequest, call: Call[Any, Any]) -> CancelIngestionResponse:
        await self._catalog.check_ingestion(call.session_id, request.ingestion_id)
        cancelled = await self._events.request_cancel(ingestion_scope(request.ingestion_id))
        return CancelIngestionResponse(cancelled=cancelled)

    async def ListDocuments(self, request: ListDocumentsRequest, call: Call[Any, Any]) -> ListDocumentsResponse:
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        documents, token = await self._catalog.page(call.session_id, page_size=size, page_token=request.page_token)
        return ListDocumentsResponse(documents=documents, next_page_token=token)

    async def GetDocument(self, request: GetDocumentRequest, call: Call[Any, Any]) -> GetDocumentResponse:
        document = await self._catalog.get(call.session_id, request.document_id)
        previews: list[Hit] = []
        if request.chunk_preview_count:
            limit = min(request.chunk_preview_count, MAX_CHUNK_PREVIEWS)
            previews = await self._chunks.chunks(call.session_id, document.id, limit=limit,
                                                 ingestion_id=document.ingestion_id)
        return GetDocumentResponse(document=document, chunks=[_chunk(hit) for hit in previews])

    async def DeleteDocument(self, request: DeleteDocumentRequest, call: Call[Any, Any]) -> DeleteDocumentResponse:
        # The record goes first, hiding its points in the same step; then every version's points go.
        document = await self._catalog.delete(call.session_id, request.document_id)
        await self._chunks.delete_document(call.session_id, document.id)
        if document.ingestion_id:
            await self._catalog.release(call.session_id, document.ingestion_id)
        if self._audit is not None:
            await self._audit.record("document.deleted", document_id=document.id, name=document.name)
        return DeleteDocumentResponse()

    async def Search(self, request: SearchRequest, call: Call[Any, Any]) -> SearchResponse:
        query = request.query.strip()
        if not query:
            raise InvalidArgument.field("query", "must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument.field("query", f"at most {MAX_QUERY_CHARS} characters")
        if request.mode not in _MODES:
            raise InvalidArgument.field("mode", "unknown search mode")
        hits = await self._search.search(
            call.session_id, query, top_k=request.top_k, mode=_MODES[request.mode],
            document_ids=list(request.document_ids), metadata_filter=dict(request.metadata_filter),
        )
        return SearchResponse(hits=[
            SearchHit(chunk=_chunk(hit), score=hit.score, document_name=hit.document_name, source_uri=hit.source_uri)
            for hit in hits
        ])
