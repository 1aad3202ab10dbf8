"""Every RPC kind over the edge WebSocket, both subprotocols, against the real servicers."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest

from daveloper.edge import Edge
from daveloper.edge.protocol import Frame, FrameType
from generated.daveloper.v1 import (
    CreateSessionRequest,
    CreateSessionResponse,
    GetSessionResponse,
    UploadHeader,
    UploadRequest,
    UploadResponse,
)
from tests.edge.client import JSON, PROTO, Client, connect, messages, status

pytestmark = pytest.mark.timeout(60)

CREATE = "/daveloper.v1.SessionService/CreateSession"
GET = "/daveloper.v1.SessionService/GetSession"
UPLOAD = "/daveloper.v1.DocumentService/Upload"
CHAT = "/daveloper.v1.AgentService/Chat"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
GUIDE = b"""# Operations guide

## Redis

Set the DAVELOPER_REDIS_URL variable to point the service at an external Redis server.
"""


async def new_token(http: aiohttp.ClientSession, edge: Edge) -> str:
    """A fresh session's token, created over a socket of its own."""
    client = await connect(http, edge)
    (created,) = messages(await client.call(1, CREATE, {}))
    await client.ws.close()
    token: str = created["token"]
    return token


async def upload_json(client: Client, stream_id: int) -> list[dict[str, Any]]:
    await client.send({"type": "open", "id": stream_id, "method": UPLOAD})
    await client.send({"type": "msg", "id": stream_id, "message": {"header": {"fileName": "ops.md"}}})
    await client.send({"type": "msg", "id": stream_id, "message": {"chunk": base64.b64encode(GUIDE).decode()}})
    await client.send({"type": "end", "id": stream_id})
    return await client.until_close(stream_id)


@pytest.mark.parametrize("protocol", [JSON, PROTO])
async def test_unary_create_then_get_session(edge: Edge, http: aiohttp.ClientSession, protocol: str) -> None:
    anonymous = await connect(http, edge, protocol=protocol)
    assert anonymous.welcome["limits"]["maxStreams"] == edge.state.settings.ws_max_streams
    assert anonymous.welcome["limits"]["heartbeatMs"] == int(edge.state.settings.heartbeat_seconds * 1000)
    request: Any = {"labels": {"team": "edge"}}
    if anonymous.binary:
        request = bytes(CreateSessionRequest(labels={"team": "edge"}))
    frames = await anonymous.call(1, CREATE, request)
    assert status(frames) == {"code": "ok"}
    assert [f["type"] for f in frames] == ["headers", "msg", "close"]
    (created,) = messages(frames)
    if anonymous.binary:
        response = CreateSessionResponse().parse(created)
        token, session_id = response.token, response.session.id
    else:
        token, session_id = created["token"], created["session"]["id"]
        assert created["session"]["labels"] == {"team": "edge"}
        assert created["session"]["createTime"].endswith("Z")  # canonical Timestamp JSON

    client = await connect(http, edge, protocol=protocol, token=token)
    assert client.welcome["session"] == session_id
    frames = await client.call(1, GET, b"" if client.binary else {})
    assert status(frames) == {"code": "ok"}
    (got,) = messages(frames)
    got_id = GetSessionResponse().parse(got).session.id if client.binary else got["session"]["id"]
    assert got_id == session_id


async def test_sessionless_socket_gets_unauthenticated_with_details(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    frames = await client.call(1, GET, {}, metadata={"x-request-id": ["req-123"]})
    result = status(frames)
    assert result["code"] == "unauthenticated"
    info = next(d for d in result["details"] if d["type"] == "google.rpc.ErrorInfo")
    assert info["debug"]["reason"] == "TOKEN_MISSING"
    base64.b64decode(info["value"] + "==")  # unpadded base64 of the detail message
    assert frames[-1]["trailers"]["x-request-id"] == ["req-123"]  # metadata passes, trailers come back


@pytest.mark.parametrize("protocol", [JSON, PROTO])
async def test_server_streaming_until_deadline(edge: Edge, http: aiohttp.ClientSession, protocol: str) -> None:
    client = await connect(http, edge, protocol=protocol)
    request: Any = b"" if client.binary else {}
    frames = await client.call(1, HEALTH_WATCH, request, timeoutMs=300)
    assert status(frames)["code"] == "deadline_exceeded", frames
    (first,) = messages(frames)
    assert first == (b"\x08\x01" if client.binary else {"status": "SERVING"})


async def test_upload_then_chat_over_one_socket(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, token=await new_token(http, edge))
    upload = await upload_json(client, 1)
    assert status(upload) == {"code": "ok"}
    events = [m["event"] for m in messages(upload)]
    assert "started" in events[0]
    assert events[-1]["stored"]["name"] == "ops.md"
    assert isinstance(events[-1]["seq"], str)  # uint64 as a JSON string

    await client.send({"type": "open", "id": 3, "method": CHAT, "credit": 1000})
    await client.send({"type": "msg", "id": 3, "message": {"send": {
        "conversationId": "c1", "text": "How do I point it at my Redis server?"}}})
    seen: list[dict[str, Any]] = []
    while not seen or "turnCompleted" not in seen[-1]:
        frame = await client.recv()
        if frame["type"] == "msg" and frame["id"] == 3:
            seen.append(frame["message"]["event"])
    assert "turnStarted" in seen[0]
    completed = seen[-1]["turnCompleted"]
    assert completed["finishReason"] == "FINISH_REASON_STOP"
    assert "DAVELOPER_REDIS_URL" in completed["text"]
    assert any("citation" in e for e in seen)
    await client.send({"type": "end", "id": 3})
    frames = await client.until_close(3)
    assert status(frames) == {"code": "ok"}


async def test_upload_over_the_binary_subprotocol(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, protocol=PROTO, token=await new_token(http, edge))
    await client.send({"type": "open", "id": 1, "method": UPLOAD,
                       "message": bytes(UploadRequest(header=UploadHeader(file_name="ops.md")))})
    await client.send({"type": "msg", "id": 1, "message": bytes(UploadRequest(chunk=GUIDE)), "end": True})
    frames = await client.until_close(1)
    assert status(frames) == {"code": "ok"}
    last = UploadResponse().parse(messages(frames)[-1])
    assert last.event.stored is not None
    assert last.event.stored.name == "ops.md"


async def test_cancel_mid_chat_turn_ends_with_close_canceled(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, token=await new_token(http, edge))
    # One credit: the edge forwards exactly one event, then stops reading the turn.
    await client.send({"type": "open", "id": 1, "method": CHAT, "credit": 1,
                       "message": {"send": {"conversationId": "c9", "text": "hello?"}}})
    frames = [await client.recv(), await client.recv()]
    assert [f["type"] for f in frames] == ["headers", "msg"]
    await client.send({"type": "cancel", "id": 1})
    rest = await client.until_close(1)
    assert [f["type"] for f in rest] == ["close"]
    assert rest[0]["status"]["code"] == "canceled"
    # Frames racing the close are ignored, and nothing follows the close.
    await client.send({"type": "credit", "id": 1, "n": 5})
    await client.send({"type": "ping", "data": "after"})
    assert await client.recv() == {"type": "pong", "data": "after"}
    assert edge.state.upstream.streams == 0


async def test_stream_errors_leave_other_streams_alone(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    # A long-lived stream that must survive its neighbours' failures.
    await client.send({"type": "open", "id": 1, "method": HEALTH_WATCH, "message": {}, "end": True})

    unknown = await client.call(3, "/daveloper.v1.Nope/Nothing", {})
    assert status(unknown)["code"] == "unimplemented"

    bad = await client.call(5, CREATE, {"ttl": 12})  # a Duration must be a string like "12s"
    result = status(bad)
    assert result["code"] == "invalid_argument"
    violation = next(d for d in result["details"] if d["type"] == "google.rpc.BadRequest")
    assert violation["debug"]["fieldViolations"][0]["field"] == "message"
    assert "ttl" in result["message"].lower() or "duration" in result["message"].lower()

    await client.send({"type": "open", "id": 7, "method": HEALTH_WATCH, "message": {}})
    await client.send({"type": "msg", "id": 7, "message": {}})  # a second request on a unary-request method
    second = await client.until_close(7)
    assert status(second)["code"] == "invalid_argument"

    ok = await client.call(9, CREATE, {})
    assert status(ok) == {"code": "ok"}
    await client.send({"type": "cancel", "id": 1})
    watch = await client.until_close(1)
    assert messages(watch) == [{"status": "SERVING"}]
    assert status(watch)["code"] == "canceled"


async def test_client_metadata_is_sanitised(edge: Edge, http: aiohttp.ClientSession) -> None:
    anonymous = await connect(http, edge)
    token = await new_token(http, edge)
    # The socket has no token: an authorization header in metadata must not smuggle one in,
    # and a grpc-timeout must not reach the server (it would fail the call at once).
    frames = await anonymous.call(1, GET, {}, metadata={
        "authorization": [f"Bearer {token}"], "grpc-timeout": ["1n"], "x-daveloper-session": ["x"],
        "X-Request-Id": ["kept-1"],
    })
    result = status(frames)
    assert result["code"] == "unauthenticated"
    assert frames[-1]["trailers"]["x-request-id"] == ["kept-1"]


async def test_deadline_on_a_unary_call_waiting_for_its_message(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    await client.send({"type": "open", "id": 1, "method": CREATE, "timeoutMs": 200})  # never sends the request
    frames = await client.until_close(1)
    assert status(frames)["code"] == "deadline_exceeded", frames


async def test_flow_control_credits(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, token=await new_token(http, edge))
    assert status(await upload_json(client, 1))["code"] == "ok"
    # The upload's event log has several events; replay them with a credit of 2.
    await client.send({"type": "open", "id": 3, "method": CHAT, "credit": 1000,
                       "message": {"send": {"conversationId": "fc", "text": "What is Redis for?"}}})
    while True:
        frame = await client.recv()
        if frame["type"] == "msg" and "turnCompleted" in frame["message"]["event"]:
            break
    await client.send({"type": "open", "id": 5, "method": "/daveloper.v1.AgentService/Watch", "credit": 2,
                       "message": {"conversationId": "fc"}, "end": True})

    async def next_messages(wait: float) -> list[Any]:
        """Stream 5's messages arriving within ``wait`` seconds."""
        got = []
        try:
            async with asyncio.timeout(wait):
                while True:
                    frame = await client.recv()
                    if frame.get("id") == 5 and frame["type"] == "msg":
                        got.append(frame["message"])
        except TimeoutError:
            return got

    first = await next_messages(0.5)
    assert len(first) == 2  # and then nothing: no credit left
    await client.send({"type": "credit", "id": 5, "n": 3})
    more = await next_messages(0.5)
    assert len(more) == 3
    seqs = [int(m["event"]["seq"]) for m in first + more]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_a_failed_upload_stores_nothing_even_if_the_client_sends_end(
        edge: Edge, http: aiohttp.ClientSession) -> None:
    # Overrun the send window: the stream ends FLOW_CONTROL_VIOLATION. The client's frames
    # that follow (here an `end`) are for a closed stream: ignored, never forwarded, so the
    # server never sees a complete upload of the first part.
    client = await connect(http, edge, token=await new_token(http, edge))
    window = client.welcome["limits"]["sendWindow"]
    line = base64.b64encode(b"A line of the document that is being uploaded in many small parts.\n").decode()
    await client.send({"type": "open", "id": 1, "method": UPLOAD, "message": {"header": {"fileName": "overrun.md"}}})
    await asyncio.sleep(0.3)  # the upstream call is open and its sender waits for chunks
    (socket,) = edge.state.sockets
    # The frames of one read, dispatched without a pause as the socket's reader does with
    # buffered frames: the stream's sender can run before its task sees the overrun's cancel.
    for _ in range(window):
        socket._dispatch(Frame(FrameType.MSG, 1, message={"chunk": line}))
    socket._dispatch(Frame(FrameType.END, 1))
    frames = await client.until_close(1)
    assert status(frames)["code"] == "resource_exhausted"
    assert "FLOW_CONTROL_VIOLATION" in str(status(frames))
    await asyncio.sleep(2.0)  # an `end` forwarded upstream would have stored the document by now
    (listed,) = messages(await client.call(3, "/daveloper.v1.DocumentService/ListDocuments", {}))
    assert listed.get("documents", []) == []
    (created,) = messages(await client.call(5, CREATE, {}))  # the socket lives on
    assert created["token"]
