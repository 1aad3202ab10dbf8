"""In-process calls (``daveloper.rpc.local``) against the same calls over a real HTTP/2 socket.

Every scenario runs through both transports to one grpclib ``Server`` with the
production interceptor installed, and what the client sees (messages, status,
message, details, trailing metadata) must be the same. Then what only a local
call can show: a reset reaches the handler, a slow reader holds its writer back,
a handler that sends no status still ends the call, a closed server refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server
from grpclib.server import Stream as ServerStream

from daveloper.edge.bridge import RawCodec, RawStatusDetailsCodec
from daveloper.errors import InvalidArgument
from daveloper.rpc import local
from daveloper.rpc.interceptor import Interceptor
from daveloper.rpc.local import LocalChannel

_MAX_MESSAGE = 256 * 1024


class _Service:
    """Raw-bytes methods of every cardinality, recording what their handlers saw."""

    def __init__(self) -> None:
        self.cancelled: asyncio.Event = asyncio.Event()
        self.sent = 0
        self.metadata: dict[str, Any] = {}
        self.peer: Any = None

    def __mapping__(self) -> dict[str, Handler]:
        uu, us, su, ss = (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM, Cardinality.STREAM_UNARY,
                          Cardinality.STREAM_STREAM)
        return {f"/t.T/{name}": Handler(func, cardinality, bytes, bytes) for name, func, cardinality in (
            ("Echo", self.echo, uu), ("Fail", self.fail, uu), ("Count", self.count, us),
            ("Sum", self.sum, su), ("Chat", self.chat, ss), ("Hang", self.hang, ss),
            ("Flood", self.flood, us), ("Vanish", self.vanish, uu), ("FailLate", self.fail_late, us))}

    async def echo(self, stream: ServerStream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        self.metadata = dict(stream.metadata or {})
        self.peer = stream.peer.addr()
        await stream.send_message(b"echo:" + (request or b""))

    async def fail(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.recv_message()
        raise InvalidArgument("bad request", violations=[("field", "is wrong")], reason="TEST")

    async def count(self, stream: ServerStream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        for i in range(int(request or b"0")):
            await stream.send_message(str(i).encode())

    async def sum(self, stream: ServerStream[bytes, bytes]) -> None:
        total = 0
        async for message in stream:
            total += int(message)
        await stream.send_message(str(total).encode())

    async def chat(self, stream: ServerStream[bytes, bytes]) -> None:
        async for message in stream:
            await stream.send_message(message.upper())

    async def hang(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.send_message(b"started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def flood(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.recv_message()
        for _ in range(16):
            await stream.send_message(b"x" * 16_384)
            self.sent += 1

    async def vanish(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.recv_message()
        raise asyncio.CancelledError  # ends without a status, as a handler cancelled by the server would

    async def fail_late(self, stream: ServerStream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(b"first")
        raise InvalidArgument("after one message", reason="LATE")


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Service, Server]]:
    service = _Service()
    server = Server([service], codec=RawCodec())
    Interceptor(max_message_bytes=_MAX_MESSAGE).install(server)
    await server.start("127.0.0.1", 0)
    try:
        yield service, server
    finally:
        server.close()
        await server.wait_closed()


def _channel(server: Server, transport: str) -> Channel:
    if transport == "local":
        return LocalChannel(server, codec=RawCodec(), status_details_codec=RawStatusDetailsCodec())
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Channel("127.0.0.1", port, codec=RawCodec(), status_details_codec=RawStatusDetailsCodec())


async def _call(channel: Channel, method: str, cardinality: Cardinality, requests: list[bytes],
                metadata: dict[str, str] | None = None, time_limit: float = 5.0) -> dict[str, Any]:
    """What a client sees of one call: its messages, status, message, details and trailing metadata."""
    seen: dict[str, Any] = {"messages": []}
    try:
        async with channel.request(f"/t.T/{method}", cardinality, bytes, bytes, timeout=time_limit,
                                   metadata=metadata) as stream:
            for i, request in enumerate(requests):
                await stream.send_message(request, end=i == len(requests) - 1)
            if not requests:
                await stream.send_request(end=True)
            async for message in stream:
                seen["messages"].append(message)
            await stream.recv_trailing_metadata()
            trailers = stream.trailing_metadata or {}
        seen["status"] = Status.OK
    except GRPCError as exc:
        seen.update(status=exc.status, message=exc.message, details=exc.details)
        trailers = stream.trailing_metadata or {}
    seen["trailers"] = sorted(k for k in trailers if k != "x-request-id")
    seen["request_id"] = "x-request-id" in trailers
    return seen


_SCENARIOS: list[tuple[str, Cardinality, list[bytes]]] = [
    ("Echo", Cardinality.UNARY_UNARY, [b"hi"]),
    ("Fail", Cardinality.UNARY_UNARY, [b"hi"]),
    ("Count", Cardinality.UNARY_STREAM, [b"50"]),
    ("Count", Cardinality.UNARY_STREAM, [b"0"]),
    ("Sum", Cardinality.STREAM_UNARY, [b"1", b"2", b"39"]),
    ("Sum", Cardinality.STREAM_UNARY, []),
    ("Chat", Cardinality.STREAM_STREAM, [b"a", b"b" * 100_000, b"c"]),
    ("Echo", Cardinality.UNARY_UNARY, [b"y" * (_MAX_MESSAGE + 1)]),  # refused before its body is read
    ("Missing", Cardinality.UNARY_UNARY, [b""]),
    ("FailLate", Cardinality.UNARY_STREAM, [b""]),
]


@pytest.mark.parametrize(("method", "cardinality", "requests"), _SCENARIOS,
                         ids=[f"{m}-{len(r)}" for m, _, r in _SCENARIOS])
async def test_a_local_call_looks_to_its_client_as_the_same_call_over_http2(
        served: tuple[_Service, Server], method: str, cardinality: Cardinality, requests: list[bytes]) -> None:
    _, server = served
    seen = {}
    for transport in ("http2", "local"):
        channel = _channel(server, transport)
        try:
            seen[transport] = await _call(channel, method, cardinality, requests)
        finally:
            channel.close()
    assert seen["local"] == seen["http2"]
    assert seen["local"]["status"] is not None


async def test_metadata_and_peer_reach_the_handler(served: tuple[_Service, Server]) -> None:
    service, server = served
    channel = _channel(server, "local")
    seen = await _call(channel, "Echo", Cardinality.UNARY_UNARY, [b"x"], metadata={"x-daveloper-test": "1"})
    assert seen["messages"] == [b"echo:x"]
    assert service.metadata["x-daveloper-test"] == "1"
    assert service.peer == ("127.0.0.1", 0)  # loopback: the interceptor trusts the edge's client address


async def test_a_client_that_cancels_cancels_the_handler(served: tuple[_Service, Server]) -> None:
    service, server = served
    channel = _channel(server, "local")
    async with channel.request("/t.T/Hang", Cardinality.STREAM_STREAM, bytes, bytes, timeout=5) as stream:
        await stream.send_request()
        assert await stream.recv_message() == b"started"
        await stream.cancel()
    await asyncio.wait_for(service.cancelled.wait(), 5)


async def test_a_deadline_ends_the_call_and_the_handler(served: tuple[_Service, Server]) -> None:
    service, server = served
    channel = _channel(server, "local")

    async def wait_past_the_deadline() -> None:
        async with channel.request("/t.T/Hang", Cardinality.STREAM_STREAM, bytes, bytes, timeout=0.3) as stream:
            await stream.send_request()
            await stream.recv_message()
            await stream.recv_message()

    with pytest.raises((GRPCError, asyncio.TimeoutError)):
        await wait_past_the_deadline()
    await asyncio.wait_for(service.cancelled.wait(), 5)


async def test_a_reader_that_stops_reading_holds_its_writer_at_one_window(served: tuple[_Service, Server]) -> None:
    service, server = served
    channel = _channel(server, "local")
    async with channel.request("/t.T/Flood", Cardinality.UNARY_STREAM, bytes, bytes, timeout=5) as stream:
        await stream.send_message(b"", end=True)
        await asyncio.sleep(0.2)  # the handler runs until the window is full, then waits
        held = service.sent
        received = [m async for m in stream]
    assert held <= local.WINDOW // 16_384 + 1 < 16
    assert len(received) == 16


async def test_a_handler_that_ends_without_a_status_ends_the_call(served: tuple[_Service, Server]) -> None:
    _, server = served
    channel = _channel(server, "local")
    with pytest.raises((StreamTerminatedError, GRPCError)):
        await _call(channel, "Vanish", Cardinality.UNARY_UNARY, [b"x"], time_limit=5)


async def test_a_closed_server_or_channel_refuses_new_calls(served: tuple[_Service, Server]) -> None:
    _, server = served
    channel = _channel(server, "local")
    channel.close()
    with pytest.raises(ConnectionRefusedError):
        await _call(channel, "Echo", Cardinality.UNARY_UNARY, [b"x"])
    other = _channel(server, "local")
    assert (await _call(other, "Echo", Cardinality.UNARY_UNARY, [b"x"]))["messages"] == [b"echo:x"]
    server.close()
    with pytest.raises(ConnectionRefusedError):
        await _call(other, "Echo", Cardinality.UNARY_UNARY, [b"x"])
