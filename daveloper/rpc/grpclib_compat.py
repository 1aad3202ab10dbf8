"""Every use of a private grpclib attribute, in one place (grpclib is pinned at 0.4.9).

grpclib has no public API for a few things the server and the edge need: the
listening socket (to stop accepting while calls drain), a bound on its
connections' TLS handshake (``start`` passes none), the HTTP/2 settings (to
decode header bytes as Latin-1), whether a stream already sent its
trailers, the protocol-level stream (to cap a message before its body is
read), and, for calls served in process (:mod:`daveloper.rpc.local`), a request
handler of the server's own and a call wrapper's pending error. Each is one
small function here, so an upgrade of grpclib is a review of this file and
``tests/rpc/test_grpclib_compat.py``, which exercises every function against a
real server and client and fails loudly when an attribute is gone.

The accessors read attributes directly (never ``getattr`` with a default): a
renamed attribute must raise, not silently change behaviour.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib import client, server, utils
from grpclib.const import Cardinality

__all__ = [
    "PINNED",
    "PRIVATE_ATTRIBUTES",
    "call_finished",
    "cardinality",
    "drop_recv_data",
    "end_sent",
    "fail_next_step",
    "listener",
    "mark_cancelled",
    "mark_ended",
    "new_handler",
    "request_sent",
    "server_closed",
    "set_header_encoding",
    "start",
    "stream_closable",
    "trailers_sent",
    "wrap_protocol_factory",
    "wrap_recv_data",
]

#: The grpclib version these accessors were written against.
PINNED = "0.4.9"

#: Class-level private attributes we read, checked by the compatibility test without a connection.
PRIVATE_ATTRIBUTES: dict[type[Any], tuple[str, ...]] = {
    server.Stream: ("_send_trailing_metadata_done",),
    client.Stream: ("_send_request_done", "_end_done", "_recv_trailing_metadata_done", "_cancel_done"),
    utils.Wrapper: ("_error",),
}

RecvData = Callable[[int], Awaitable[bytes]]


# ---- grpclib.server.Server ----

def set_header_encoding(srv: server.Server, encoding: str) -> None:
    """Decode incoming header bytes with ``encoding`` (grpclib's h2 configuration has no public setter)."""
    srv._h2_config.header_encoding = encoding


def listener(srv: server.Server) -> asyncio.AbstractServer | None:
    """The listening socket's server once :meth:`~grpclib.server.Server.start` ran (grpclib does not expose it)."""
    return srv._server


async def start(srv: server.Server, host: str, port: int, *, ssl: ssl_.SSLContext | None = None, backlog: int = 100,
                ssl_handshake_timeout: float | None = None) -> None:
    """:meth:`~grpclib.server.Server.start` on a TCP address, with a bound on each connection's TLS handshake.

    grpclib's ``start`` passes none to ``create_server``, so asyncio's default (60 s) held a
    connection that never finished its handshake that long, before any of our guards could see
    it (the protocol they wrap is only given the connection once the handshake is done).
    """
    if srv._server is not None:
        raise RuntimeError("Server is already started")
    srv._server = await srv._loop.create_server(
        srv._protocol_factory, host, port, backlog=backlog, ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout if ssl is not None else None)
    srv._server_closed_fut = srv._loop.create_future()


def new_handler(srv: server.Server) -> server.Handler:
    """A request handler of ``srv`` for calls that come from no connection (:mod:`daveloper.rpc.local`).

    Built as ``srv`` builds one per connection, and registered with it, so the
    server's ``close`` cancels its calls and ``wait_closed`` waits for them.
    """
    handler = server.Handler(srv._mapping, srv._codec, srv._status_details_codec, srv.__dispatch__)
    srv._handlers.add(handler)
    return handler


def server_closed(srv: server.Server) -> bool:
    """Whether ``srv.close()`` was called (its closed future is resolved)."""
    closed = srv._server_closed_fut
    return closed is not None and closed.done()


def wrap_protocol_factory(srv: server.Server, wrap: Callable[[Callable[[], Any]], Callable[[], Any]]) -> None:
    """Make ``srv`` accept connections through ``wrap(its protocol factory)``; call before ``start``."""
    srv._protocol_factory = wrap(srv._protocol_factory)  # type: ignore[method-assign]


# ---- grpclib.server.Stream ----

def trailers_sent(stream: server.Stream[Any, Any]) -> bool:
    """Whether the handler's stream already sent its trailing metadata (the status)."""
    return bool(stream._send_trailing_metadata_done)


def cardinality(stream: server.Stream[Any, Any]) -> Cardinality:
    """The cardinality of the method the stream serves."""
    value: Cardinality = stream._cardinality
    return value


def wrap_recv_data(stream: server.Stream[Any, Any], wrap: Callable[[RecvData], RecvData]) -> None:
    """Replace the protocol stream's ``recv_data(size)`` (it reads one message body) with ``wrap(original)``."""
    proto = stream._stream
    proto.recv_data = wrap(proto.recv_data)  # type: ignore[method-assign,assignment]


def drop_recv_data(stream: server.Stream[Any, Any]) -> None:
    """Undo :func:`wrap_recv_data`: the wrapper refers to the stream that refers to it (a reference cycle)."""
    stream._stream.__dict__.pop("recv_data", None)


# ---- grpclib.utils.Wrapper ----

def fail_next_step(wrapper: utils.Wrapper, error: Exception) -> None:
    """Make the next ``with wrapper`` of a call (or the one running) raise ``error``, without cancelling a task.

    ``Wrapper.cancel`` does both; a cancel that reaches a task still waiting inside
    the wrapper leaves the task's cancel count raised (grpclib never uncancels it).
    """
    wrapper._error = error


# ---- grpclib.client.Stream ----

def request_sent(stream: client.Stream[Any, Any]) -> bool:
    """Whether the request headers went out."""
    return bool(stream._send_request_done)


def end_sent(stream: client.Stream[Any, Any]) -> bool:
    """Whether our side half-closed (or is treated as such)."""
    return bool(stream._end_done)


def call_finished(stream: client.Stream[Any, Any]) -> bool:
    """Whether the call is over: trailers received or the call cancelled."""
    return bool(stream._recv_trailing_metadata_done or stream._cancel_done)


def stream_closable(stream: client.Stream[Any, Any]) -> bool:
    """Whether the HTTP/2 stream is still open, so an ``end`` or a reset can be sent on it."""
    return bool(stream._stream.closable)


def mark_cancelled(stream: client.Stream[Any, Any]) -> None:
    """Treat the call as cancelled (the server already closed its HTTP/2 stream: there is nothing to reset)."""
    stream._cancel_done = True


def mark_ended(stream: client.Stream[Any, Any]) -> None:
    """Treat our side as half-closed (the HTTP/2 stream is gone, so ``end()`` could not be sent)."""
    stream._end_done = True
