"""Every private grpclib attribute we use, exercised on a real server and client.

When grpclib is upgraded and one of these fails, ``daveloper/rpc/grpclib_compat.py``
is the one file to review.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.const import Cardinality, Handler
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Server
from grpclib.server import Stream as ServerStream
from grpclib.utils import Wrapper

from daveloper.edge.bridge import RawCodec
from daveloper.rpc import grpclib_compat

_PATH = "/test.Echo/Echo"


class _Echo:
    """One unary method that records what the server-side accessors report."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.sizes: list[int] = []
        self.connections = 0

    def __mapping__(self) -> dict[str, Handler]:
        return {_PATH: Handler(self.echo, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def echo(self, stream: ServerStream[bytes, bytes]) -> None:
        def wrap(read: grpclib_compat.RecvData) -> grpclib_compat.RecvData:
            async def recv_data(size: int) -> bytes:
                self.sizes.append(size)
                return await read(size)
            return recv_data

        grpclib_compat.wrap_recv_data(stream, wrap)
        self.seen["cardinality"] = grpclib_compat.cardinality(stream)
        request = await stream.recv_message()
        self.seen["before"] = grpclib_compat.trailers_sent(stream)
        await stream.send_message(request or b"")
        await stream.send_trailing_metadata()
        self.seen["after"] = grpclib_compat.trailers_sent(stream)
        grpclib_compat.drop_recv_data(stream)
        self.seen["dropped"] = "recv_data" not in vars(stream._stream)


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Echo, Server]]:
    echo = _Echo()
    server = Server([echo], codec=RawCodec())
    grpclib_compat.set_header_encoding(server, "latin-1")

    def counting(factory: Callable[[], Any]) -> Callable[[], Any]:
        def make() -> Any:
            echo.connections += 1
            return factory()
        return make

    grpclib_compat.wrap_protocol_factory(server, counting)
    assert grpclib_compat.listener(server) is None  # not started yet
    await grpclib_compat.start(server, "127.0.0.1", 0)  # no TLS: no handshake to bound
    try:
        yield echo, server
    finally:
        server.close()
        await server.wait_closed()


def test_the_installed_grpclib_is_the_version_the_accessors_were_written_for() -> None:
    assert metadata.version("grpclib") == grpclib_compat.PINNED, (
        "grpclib changed: review daveloper/rpc/grpclib_compat.py against it, then update PINNED")


def test_the_class_level_private_attributes_exist() -> None:
    for cls, names in grpclib_compat.PRIVATE_ATTRIBUTES.items():
        for name in names:
            assert hasattr(cls, name), f"{cls.__module__}.{cls.__qualname__}.{name} is gone"


async def test_every_accessor_works_on_a_real_call(served: tuple[_Echo, Server]) -> None:
    echo, server = served
    assert server._h2_config.header_encoding == "latin-1"
    listening = grpclib_compat.listener(server)
    assert listening is not None
    port = listening.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port, codec=RawCodec())
    try:
        async with channel.request(_PATH, Cardinality.UNARY_UNARY, bytes, bytes, timeout=5) as call:
            stream: ClientStream[bytes, bytes] = call
            assert not grpclib_compat.request_sent(stream)
            await stream.send_request()
            assert grpclib_compat.request_sent(stream)
            assert grpclib_compat.stream_closable(stream)
            assert not grpclib_compat.end_sent(stream)
            await stream.send_message(b"hello", end=True)
            assert grpclib_compat.end_sent(stream)
            assert await stream.recv_message() == b"hello"
            assert not grpclib_compat.call_finished(stream)
            await stream.recv_trailing_metadata()
            assert grpclib_compat.call_finished(stream)
        async with channel.request(_PATH, Cardinality.UNARY_UNARY, bytes, bytes, timeout=5) as call:
            await call.send_request()
            grpclib_compat.mark_ended(call)
            assert grpclib_compat.end_sent(call)
            grpclib_compat.mark_cancelled(call)
            assert grpclib_compat.call_finished(call)
    finally:
        channel.close()
    assert echo.seen == {"cardinality": Cardinality.UNARY_UNARY, "before": False, "after": True, "dropped": True}
    assert echo.sizes[:1] == [5]
    assert echo.connections == 1  # the channel's one connection came through the wrapped factory


async def test_the_accessors_of_in_process_calls_work_on_a_real_server(served: tuple[_Echo, Server]) -> None:
    _, server = served
    handler = grpclib_compat.new_handler(server)
    assert handler in server._handlers
    assert not handler.closing
    assert not grpclib_compat.server_closed(server)
    server.close()
    assert grpclib_compat.server_closed(server)
    assert handler.closing  # the server's close reaches calls that came from no connection


def test_a_wrapper_told_to_fail_fails_its_next_step() -> None:
    wrapper = Wrapper()
    grpclib_compat.fail_next_step(wrapper, StreamTerminatedError("reset"))
    with pytest.raises(StreamTerminatedError), wrapper:
        pass
