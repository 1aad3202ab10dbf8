"""Calls a client ends early are normal: they log no ERROR (ERROR means a server fault).

A cancelled server stream, a second message on a unary call, a client that
resets a stream mid-upload: each used to log ERROR with a traceback
(``StreamClosedError``, grpclib's "Failed to handle cancellation").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from grpclib.server import Server
from grpclib.server import Stream as ServerStream

from daveloper.app import App
from daveloper.config import Address, Settings
from daveloper.edge import Edge, open_edge
from daveloper.edge.bridge import RawCodec
from daveloper.rpc import Interceptor, grpclib_compat
from generated.daveloper.v1 import WatchRequest
from tests.edge.client import connect, messages
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
_WATCH = "/daveloper.v1.AgentService/Watch"
_CREATE_SESSION = "/daveloper.v1.SessionService/CreateSession"
_WATCH_JOB = "/daveloper.v1.ScraperService/WatchJob"
_UPLOAD = "/daveloper.v1.DocumentService/Upload"


@pytest.fixture
async def raw(app: App) -> AsyncIterator[Channel]:
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port, codec=RawCodec(),
                      status_details_codec=ProtoStatusDetailsCodec())
    try:
        yield channel
    finally:
        channel.close()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def _settle(app: App) -> None:
    for _ in range(150):  # up to 3 s
        if not app.interceptor.inflight:
            return
        await asyncio.sleep(0.02)


async def test_a_cancelled_server_stream_logs_no_error(app: App, raw: Channel,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(5):
        async with raw.request(_HEALTH_WATCH, Cardinality.UNARY_STREAM, bytes, bytes, timeout=10) as call:
            await call.send_message(HealthCheckRequest().SerializeToString(), end=True)
            assert await call.recv_message()
            await call.cancel()
    await _settle(app)
    assert not _errors(caplog)


async def test_a_cancelled_watch_of_a_conversation_logs_no_error(app: App, raw: Channel, token: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    request = WatchRequest(conversation_id="quiet")
    for _ in range(5):
        async with raw.request(_WATCH, Cardinality.UNARY_STREAM, bytes, bytes, timeout=10,
                               metadata=bearer(token)) as call:
            await call.send_message(bytes(request), end=True)
            await asyncio.sleep(0.2)  # the handler is waiting for the conversation's first event
            await call.cancel()
    await _settle(app)
    assert not app.interceptor.inflight
    assert not _errors(caplog)


async def test_a_second_message_on_a_unary_call_is_a_client_error_not_a_server_fault(
        app: App, raw: Channel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # Client-streaming on the client side: grpclib's unary client would refuse to send two.
    async with raw.request(_CREATE_SESSION, Cardinality.STREAM_UNARY, bytes, bytes, timeout=10) as call:
        await call.send_message(b"")
        await call.send_message(b"")
        await call.end()
        status = Status.OK
        try:  # answered or refused, never as a server fault
            await call.recv_message()
            await call.recv_trailing_metadata()
        except GRPCError as error:
            status = error.status
    assert status is not Status.INTERNAL
    await _settle(app)
    assert not _errors(caplog)


async def test_a_client_reset_mid_upload_logs_no_error(app: App, raw: Channel, token: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    header = b"\x0a\x06\x0a\x04a.md"  # UploadRequest.header { file_name: "a.md" }
    for _ in range(3):
        async with raw.request(_UPLOAD, Cardinality.STREAM_STREAM, bytes, bytes, timeout=10,
                               metadata=bearer(token)) as call:
            await call.send_message(header)
            await call.send_message(b"\x12\x05hello")  # a chunk
            await asyncio.sleep(0.05)
            await call.cancel()
    await _settle(app)
    assert not _errors(caplog)


async def test_websocket_aborts_log_no_error(settings: Settings, app: App,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with (open_edge(settings.replace(edge_addr=Address("127.0.0.1", 0)), upstreams=[app.grpc_addr],
                          health=app.health) as edge, aiohttp.ClientSession() as http):
        await _websocket_aborts(edge, http)
    await _settle(app)
    assert not _errors(caplog)


async def _websocket_aborts(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    (created,) = messages(await client.call(1, _CREATE_SESSION, {}))
    await client.ws.close()
    client = await connect(http, edge, token=created["token"])
    # A cancelled server stream.
    await client.send({"type": "open", "id": 1, "method": _HEALTH_WATCH, "message": {}, "end": True})
    await asyncio.sleep(0.1)
    await client.send({"type": "cancel", "id": 1})
    await client.until_close(1)
    # A second message on a unary call.
    await client.send({"type": "open", "id": 3, "method": _CREATE_SESSION, "message": {}})
    await client.send({"type": "msg", "id": 3, "message": {}})
    await client.until_close(3)
    # A window overrun mid-upload.
    window = client.welcome["limits"]["sendWindow"]
    burst = [{"type": "open", "id": 5, "method": _UPLOAD, "message": {"header": {"fileName": "x.md"}}},
             *({"type": "msg", "id": 5, "message": {"chunk": "aGVsbG8K"}} for _ in range(window * 4))]
    await asyncio.gather(*(client.send(frame) for frame in burst))
    await client.until_close(5)
    # A socket dropped with streams open.
    await client.send({"type": "open", "id": 7, "method": _HEALTH_WATCH, "message": {}, "end": True})
    await asyncio.sleep(0.1)
    await client.ws.close()
    await asyncio.sleep(0.3)


class _LosesItsCancel:
    """A server stream whose handler loses the client's cancel (as a library's ``wait_for`` can on
    Python 3.11) and then writes to the reset stream."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    def __mapping__(self) -> dict[str, Handler]:
        return {"/test.Lossy/Watch": Handler(self.watch, Cardinality.UNARY_STREAM, bytes, bytes)}

    async def watch(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(b"first")
        with contextlib.suppress(asyncio.CancelledError):  # lost, as inside a library
            await asyncio.sleep(10)
        try:
            await stream.send_message(b"to nobody")
        finally:
            self.ended.set()


async def test_a_handler_failing_after_its_client_left_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    lossy = _LosesItsCancel()
    server = Server([lossy], codec=RawCodec())
    Interceptor(max_message_bytes=1 << 20).install(server)
    await server.start("127.0.0.1", 0)
    channel = Channel("127.0.0.1", grpclib_compat.listener(server).sockets[0].getsockname()[1],  # type: ignore[union-attr]
                      codec=RawCodec())
    try:
        async with channel.request("/test.Lossy/Watch", Cardinality.UNARY_STREAM, bytes, bytes, timeout=5) as call:
            await call.send_message(b"", end=True)
            assert await call.recv_message() == b"first"
            await call.cancel()
        await asyncio.wait_for(lossy.ended.wait(), 5)
        await asyncio.sleep(0.1)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
    assert not _errors(caplog)
