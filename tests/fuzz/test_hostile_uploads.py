"""Uploads that cost far more than their size, at the real DocumentService.

Each either ingests within the parse budget or fails RESOURCE_EXHAUSTED with
reason PARSE_BUDGET_EXCEEDED (or is refused as malformed), stores nothing
when it fails, and the server's health check keeps answering while it runs:
the work happens in the document pool's worker processes, not on the loop.
(Health latency itself is measured by ``scripts/bench/documents.py``, not
asserted here: timings on a shared CI machine would make the test flaky.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from daveloper.app import open_app
from daveloper.config import Settings
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    IngestEvent,
    ListDocumentsRequest,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from tests.fuzz.test_parsers import DOCX_ATTACKS
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(300)

OVER_BUDGET = "PARSE_BUDGET_EXCEEDED"


def one_line(megabytes: int) -> bytes:
    """Prose with no line break and no sentence end: every split falls to the word level."""
    words = b"lorem ipsum dolor sitAmet consectetur adipiscing_elit sed do eiusmod tempor "
    return (words * (megabytes * (1 << 20) // len(words) + 1))[: megabytes << 20]


def nested_quotes(size: int) -> bytes:
    """Blockquotes nested ever deeper, one level more per line."""
    lines, total, depth = [], 0, 1
    while total < size:
        line = b"> " * depth + b"quoted text\n"
        lines.append(line)
        total, depth = total + len(line), depth + 1
    return b"".join(lines)


#: name → (content, outcomes the server may give: "stored", a refusal reason, or OVER_BUDGET)
HOSTILE: dict[str, tuple[bytes, set[str]]] = {
    "one-line.txt": (one_line(30), {OVER_BUDGET}),
    "quotes.md": (nested_quotes(1_500_000), {"stored", OVER_BUDGET}),
    "flat-quotes.md": (b"> " * 750_000 + b"x\n", {"stored", OVER_BUDGET}),
    "nested.html": (b"<html><body>" + b"<div>" * 200_000 + b"deep text" + b"</div>" * 200_000 + b"</body></html>",
                    {"stored", "NO_TEXT", OVER_BUDGET}),
    "bomb.docx": (DOCX_ATTACKS["zip bomb"](), {"DOCUMENT_TOO_LARGE", OVER_BUDGET}),
}


def _requests(name: str, data: bytes) -> list[UploadRequest]:
    header = UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data)))
    return [header, *(UploadRequest(chunk=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20))]


async def _upload(docs: DocumentServiceStub, token: str, name: str, data: bytes) -> str:
    events: list[IngestEvent] = []
    error: GRPCError | None = None
    try:
        async for response in docs.upload(_requests(name, data), timeout=240, metadata=bearer(token)):
            events.append(response.event)
    except GRPCError as caught:
        error = caught
    if error is None:
        assert events[-1].stored is not None, (name, events[-1])
        return "stored"
    assert error.status in (Status.RESOURCE_EXHAUSTED, Status.INVALID_ARGUMENT), (name, error)
    assert (error.status is Status.RESOURCE_EXHAUSTED) == (reason(error) == OVER_BUDGET), (name, error)
    assert events[-1].failed is not None, (name, events[-1])  # the ingestion's log ends with it too
    return reason(error)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_message_bytes=2 << 20)


async def test_hostile_uploads_stay_within_budget_and_health_keeps_answering(settings: Settings) -> None:
    async with open_app(settings) as app:
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            session = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)
            token = session.token
            docs, health = DocumentServiceStub(channel), HealthStub(channel)
            checks: list[int] = []

            async def check_health() -> None:
                while True:
                    answer = await health.Check(HealthCheckRequest(), timeout=10)
                    checks.append(answer.status)
                    await asyncio.sleep(0.05)

            checker = asyncio.create_task(check_health())
            try:
                outcomes = {name: await _upload(docs, token, name, data) for name, (data, _) in HOSTILE.items()}
            finally:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker
            for name, (_, allowed) in HOSTILE.items():
                assert outcomes[name] in allowed, outcomes
            assert checks
            assert set(checks) == {HealthCheckResponse.SERVING}
            listed = await docs.list_documents(ListDocumentsRequest(), timeout=10, metadata=bearer(token))
            stored = {name for name, outcome in outcomes.items() if outcome == "stored"}
            assert {document.name for document in listed.documents} == stored  # failures left nothing behind
            assert session.session is not None
            assert await app.chunk_store.count(session.session.id) == sum(
                document.chunk_count for document in listed.documents)
        finally:
            channel.close()
