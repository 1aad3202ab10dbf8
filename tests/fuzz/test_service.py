"""Malformed uploads at the real DocumentService: each fails clearly, and the server keeps serving."""

from __future__ import annotations

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.documents.parsing import Reason
from generated.daveloper.v1 import DocumentServiceStub, IngestEvent, UploadHeader, UploadRequest
from tests.documents import samples
from tests.fuzz.test_parsers import DOCX_ATTACKS, PDF_ATTACKS, TEXT_ATTACKS
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(120)

MALFORMED: list[tuple[str, bytes]] = [
    ("truncated.pdf", samples.pdf_two_pages()[:700]),
    ("corrupt.pdf", samples.corrupt_pdf()),
    ("cycle.pdf", PDF_ATTACKS["pages cycle"]),
    ("bomb.docx", DOCX_ATTACKS["zip bomb"]()),
    ("lying.docx", DOCX_ATTACKS["lying zip bomb"]()),
    ("entries.docx", DOCX_ATTACKS["too many entries"]()),
    ("truncated.docx", samples.docx_handbook()[:2000]),
    ("garbage.bin", samples.binary_garbage()),
    ("empty.md", b"   \n\n"),
    ("nested.html", TEXT_ATTACKS["html 100k nested div"][0]),
    ("deep.py", TEXT_ATTACKS["python 10k parentheses"][0]),
]


def _requests(name: str, data: bytes) -> list[UploadRequest]:
    header = UploadRequest(header=UploadHeader(file_name=name, size_bytes=len(data)))
    return [header, *(UploadRequest(chunk=data[i:i + (1 << 16)]) for i in range(0, len(data), 1 << 16))]


async def test_malformed_uploads_fail_clearly_and_the_server_keeps_serving(channel: Channel, token: str) -> None:
    docs = DocumentServiceStub(channel)
    outcomes: dict[str, str] = {}
    for name, data in MALFORMED:
        events: list[IngestEvent] = []
        error: GRPCError | None = None
        try:
            async for response in docs.upload(_requests(name, data), timeout=30, metadata=bearer(token)):
                events.append(response.event)
        except GRPCError as caught:
            error = caught
        if error is not None:
            assert error.status is Status.INVALID_ARGUMENT, (name, error)
            outcomes[name] = reason(error)
            if events:  # a stream that got as far as an ingestion ends it with a failed event
                assert events[-1].failed is not None, (name, events[-1])
                assert events[-1].failed.reason == outcomes[name], (name, events[-1])
        else:
            outcomes[name] = "stored" if events and events[-1].stored is not None else "?"
    refused = {name: why for name, why in outcomes.items() if why != "stored"}
    assert set(refused.values()) <= set(Reason), outcomes
    must_refuse = {"truncated.pdf", "corrupt.pdf", "cycle.pdf", "bomb.docx", "lying.docx", "entries.docx",
                   "truncated.docx", "garbage.bin", "empty.md", "nested.html"}
    assert must_refuse <= set(refused), outcomes
    assert outcomes["bomb.docx"] == outcomes["entries.docx"] == Reason.DOCUMENT_TOO_LARGE

    events = [r.event async for r in docs.upload(_requests("guide.md", samples.markdown_guide().encode()),
                                                  timeout=30, metadata=bearer(token))]
    assert events[-1].stored is not None
    assert events[-1].stored.chunk_count > 0
