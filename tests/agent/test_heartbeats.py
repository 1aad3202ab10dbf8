"""Long streams send a heartbeat when quiet, over gRPC and through the edge, so a stall is visible."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from daveloper.app import App
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatRequest,
    LogsServiceStub,
    SendMessage,
    TailRequest,
    UploadHeader,
    UploadRequest,
    UploadResponse,
    WatchRequest,
)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(heartbeat_seconds=0.2)


async def test_a_quiet_watch_gets_heartbeats_naming_the_last_seq(channel: Channel, token: str) -> None:
    stub = AgentServiceStub(channel)
    events = [r.event async for r in stub.chat([ChatRequest(send=SendMessage(conversation_id="hb", text="hi"))],
                                               timeout=10, metadata=bearer(token))]
    beats = 0
    async for response in stub.watch(WatchRequest(conversation_id="hb"), timeout=10, metadata=bearer(token)):
        if response.heartbeat is not None:
            assert response.event is None
            assert response.heartbeat.last_seq == events[-1].seq  # everything replayed, then quiet
            assert response.heartbeat.time is not None
            beats += 1
            if beats == 3:
                break
        else:
            assert response.event is not None
    # An empty conversation's watch, and a chat stream with nothing to say, beat too.
    async for response in stub.watch(WatchRequest(conversation_id="empty"), timeout=10, metadata=bearer(token)):
        assert response.heartbeat is not None
        assert response.heartbeat.last_seq == 0
        break
    async for tail in LogsServiceStub(channel).tail(TailRequest(), timeout=10, metadata=bearer(token)):
        if tail.heartbeat is not None:
            break


@pytest.fixture
async def edge(app: App) -> AsyncIterator[Edge]:
    async with open_edge(app.settings, upstreams=[app.grpc_addr], health=app.health) as running:
        yield running


async def test_heartbeats_reach_an_ndjson_client_through_the_edge(edge: Edge, token: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        f"{edge.url}/daveloper.v1.AgentService/Watch", json={"conversationId": "quiet"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
        line = json.loads(await response.content.readline())
    assert line["result"]["heartbeat"].get("lastSeq", "0") == "0"  # canonical JSON leaves out zeros
    assert "time" in line["result"]["heartbeat"]


async def test_a_slow_upload_gets_heartbeats_while_its_bytes_arrive(channel: Channel, token: str) -> None:
    stream: Stream[UploadRequest, UploadResponse]
    async with channel.request("/daveloper.v1.DocumentService/Upload", Cardinality.STREAM_STREAM, UploadRequest,
                               UploadResponse, timeout=10, metadata=bearer(token)) as stream:
        await stream.send_message(UploadRequest(header=UploadHeader(file_name="slow.md")))
        while (response := await stream.recv_message()) is not None:
            if response.heartbeat is not None:
                break
        else:
            raise AssertionError("the upload ended without a heartbeat")
        await stream.send_message(UploadRequest(chunk=b"# Slow\n\nIt came.\n"), end=True)
        events = [r.event async for r in stream if r.event is not None]
    assert events[-1].stored is not None
