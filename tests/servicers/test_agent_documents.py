"""The agent answers from the session's documents as they are now, and only from those it is allowed."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel

from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatOptions,
    ChatRequest,
    DeleteDocumentRequest,
    DeleteSessionRequest,
    Document,
    DocumentServiceStub,
    SendMessage,
    SessionServiceStub,
    UploadHeader,
    UploadRequest,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

FLUX = b"""# Flux capacitor notes

## Speed

The flux capacitor engages at eighty-eight miles per hour. It needs 1.21 gigawatts to do so.
"""

WARP = b"""# Warp drive notes

## Speed

The warp drive engages at warp factor nine. The flux capacitor is not part of it at all.
"""

QUESTION = "At what speed does the flux capacitor engage?"


async def upload(channel: Channel, token: str, name: str, body: bytes) -> Document:
    messages = [UploadRequest(header=UploadHeader(file_name=name)), UploadRequest(chunk=body)]
    events = [r.event async for r in DocumentServiceStub(channel).upload(messages, timeout=30,
                                                                          metadata=bearer(token))]
    stored = events[-1].stored
    assert stored is not None
    return stored


async def ask(channel: Channel, token: str, text: str, options: ChatOptions | None = None) -> list[ChatEvent]:
    requests = [ChatRequest(send=SendMessage(text=text, options=options))]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]


def answer(events: list[ChatEvent]) -> str:
    completed = events[-1].turn_completed
    assert completed is not None, events[-1]
    return completed.text


def cited(events: list[ChatEvent]) -> set[str]:
    return {e.citation.document_id for e in events if e.citation is not None}


def sent_passages(events: list[ChatEvent]) -> str:
    return "\n".join(e.tool_result.content for e in events if e.tool_result is not None)


async def test_a_new_document_answers_the_same_question_asked_again(channel: Channel, token: str) -> None:
    before = await ask(channel, token, QUESTION)
    assert "eighty-eight" not in answer(before)
    flux = await upload(channel, token, "flux.md", FLUX)
    after = await ask(channel, token, QUESTION)  # a new conversation, the same search arguments
    assert "eighty-eight" in answer(after)
    assert cited(after) == {flux.id}


async def test_a_deleted_document_is_no_longer_cited_or_sent(channel: Channel, token: str) -> None:
    flux = await upload(channel, token, "flux.md", FLUX)
    assert cited(await ask(channel, token, QUESTION)) == {flux.id}
    await DocumentServiceStub(channel).delete_document(DeleteDocumentRequest(document_id=flux.id), timeout=5,
                                                       metadata=bearer(token))
    after = await ask(channel, token, QUESTION)
    assert flux.id not in cited(after)
    assert "eighty-eight" not in sent_passages(after) + answer(after)


async def test_only_the_allowed_documents_are_searched(channel: Channel, token: str) -> None:
    flux = await upload(channel, token, "flux.md", FLUX)
    warp = await upload(channel, token, "warp.md", WARP)
    assert flux.id in cited(await ask(channel, token, QUESTION))
    only_warp = await ask(channel, token, QUESTION, ChatOptions(document_ids=[warp.id]))
    assert cited(only_warp) == {warp.id}
    assert "eighty-eight" not in sent_passages(only_warp)
    only_flux = await ask(channel, token, QUESTION, ChatOptions(document_ids=[flux.id]))
    assert cited(only_flux) == {flux.id}


async def test_deleting_the_session_purges_its_tool_cache(channel: Channel, token: str,
                                                          redis: aioredis.Redis) -> None:
    await upload(channel, token, "flux.md", FLUX)
    await ask(channel, token, QUESTION)
    assert [k async for k in redis.scan_iter(match="dv:toolcache:*")]
    assert [k async for k in redis.scan_iter(match="dv:docversion:*")]
    await SessionServiceStub(channel).delete_session(DeleteSessionRequest(), timeout=10, metadata=bearer(token))
    assert [k async for k in redis.scan_iter(match="dv:toolcache:*")] == []
    assert [k async for k in redis.scan_iter(match="dv:docversion:*")] == []
