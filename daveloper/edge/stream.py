"""One bridged stream: a WebSocket stream id bound to one upstream gRPC call.

The stream's task (owned by its socket's task group) opens the upstream call
and pumps responses to the socket while a sender task it owns forwards the
client's messages. Flow control in both directions is counted in messages:

* server → client: a response is read from the upstream call only while the
  client has granted credit, so a slow client leaves messages in HTTP/2
  buffers (and slows the servicer through HTTP/2 flow control) instead of
  in the edge's memory;
* client → server: the client may have ``send_window`` messages in flight;
  the edge grants more (``credit`` frames) as it forwards them upstream.

Whatever happens, the stream ends with exactly one ``close`` frame.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from aiohttp import web
from grpclib.client import Stream
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import H2Error

from daveloper.edge.bridge import Backend, Upstream, UpstreamCall, call_status, end_sending, status_of
from daveloper.edge.codec import MessageCodec, Method
from daveloper.edge.metadata import expose
from daveloper.edge.protocol import Frame, FrameType
from daveloper.edge.status import RpcStatus, edge_status, status_reason
from daveloper.edge.wire import Wire
from daveloper.metrics import Metrics
from daveloper.tracing import inject, server_span, set_status

__all__ = ["BridgedStream", "Outbox", "StreamError"]

log = logging.getLogger("daveloper.edge")

MAX_CREDIT = 2**31 - 1


class StreamError(Exception):
    """The client misused one stream: it ends with ``status``; the socket lives on."""

    def __init__(self, status: RpcStatus) -> None:
        super().__init__(status.message)
        self.status = status


class Outbox:
    """Frames waiting to go out on one socket, sent in order by one writer task.

    Control frames (``headers``, ``close``, ``credit``, ...) are pushed without
    waiting, so a stream can always report its end; response messages wait
    while ``high_water`` frames are queued, which bounds memory per socket.
    """

    def __init__(self, ws: web.WebSocketResponse, wire: Wire, *, high_water: int = 64) -> None:
        self._ws = ws
        self._wire = wire
        self._high_water = high_water
        self._queue: collections.deque[Frame] = collections.deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()

    def push(self, frame: Frame) -> None:
        self._queue.append(frame)
        self._ready.set()
        self._empty.clear()
        if len(self._queue) >= self._high_water:
            self._room.clear()

    async def send(self, frame: Frame) -> None:
        while not self._room.is_set():
            await self._room.wait()
        self.push(frame)

    async def run(self) -> None:
        """Write frames until cancelled or the socket fails."""
        while True:
            while not self._queue:
                self._empty.set()
                self._ready.clear()
                await self._ready.wait()
            frame = self._queue.popleft()
            if len(self._queue) < self._high_water:
                self._room.set()
            data = self._wire.encode(frame)
            try:
                if isinstance(data, str):
                    await self._ws.send_str(data)
                else:
                    await self._ws.send_bytes(data)
            except ConnectionError:
                # The peer went away; the socket's reader sees that and ends everything. Frames
                # still queued can never be sent: drop them so flush() and send() don't wait.
                self._queue.clear()
                self._room.set()
                self._empty.set()
                return

    async def flush(self) -> None:
        """Wait until every queued frame was handed to the transport."""
        await self._empty.wait()


class BridgedStream:
    """The edge side of one stream; see the module docstring."""

    def __init__(
        self,
        stream_id: int,
        method: Method,
        *,
        outbox: Outbox,
        wire: Wire,
        codec: MessageCodec,
        credit: int,
        send_window: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.id = stream_id
        self._metrics = metrics if metrics is not None else Metrics()
        self.method = method
        self._outbox = outbox
        self._wire = wire
        self._codec = codec
        self._credit = credit
        self._credit_granted = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue()
        self._send_window = send_window
        self._window = send_window  # messages the client may still send
        self._forwarded = 0  # forwarded upstream since the last grant
        self._requests = 0
        self._half_closed = False
        self._ended_by_edge: RpcStatus | None = None
        self._status: RpcStatus | None = None
        self._responded = False  # a HEADERS frame went to the client: the call can no longer move
        self._sent: list[tuple[bytes, bool] | None] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    # ---- frames from the client (called by the socket's reader) ----

    @property
    def terminated(self) -> bool:
        """Ended by the edge (a cancel, a misuse, drain): client frames for it are ignored from now on."""
        return self._ended_by_edge is not None

    def deliver(self, data: bytes, *, end: bool) -> None:
        """A request message from the client (ignored once the stream was terminated)."""
        if self.terminated:
            return
        if self._half_closed:
            raise StreamError(edge_status(Status.INVALID_ARGUMENT, "message after end of stream",
                                          reason="MESSAGE_AFTER_END"))
        self._requests += 1
        if not self.method.cardinality.client_streaming and self._requests > 1:
            raise StreamError(edge_status(
                Status.INVALID_ARGUMENT, f"{self.method.path} takes exactly one request message",
                reason="CARDINALITY_VIOLATION"))
        if self._window <= 0:
            raise StreamError(edge_status(
                Status.RESOURCE_EXHAUSTED, "client sent more messages than the edge granted",
                reason="FLOW_CONTROL_VIOLATION"))
        self._window -= 1
        self._half_closed = end
        self._inbox.put_nowait((data, end))

    def end(self) -> None:
        """The client half-closed (ignored once the stream was terminated)."""
        if self._half_closed or self.terminated:
            return
        if not self.method.cardinality.client_streaming and self._requests == 0:
            raise StreamError(edge_status(
                Status.INVALID_ARGUMENT, f"{self.method.path} takes exactly one request message",
                reason="CARDINALITY_VIOLATION"))
        self._half_closed = True
        self._inbox.put_nowait(None)

    def grant(self, n: int) -> None:
        """The client can take ``n`` more response messages."""
        self._credit = min(self._credit + n, MAX_CREDIT)
        self._credit_granted.set()

    def terminate(self, status: RpcStatus) -> None:
        """End the stream now with ``status`` (client cancel, a misuse, drain).

        Nothing the client sent and the sender has not forwarded yet goes upstream,
        least of all a half-close: a failed upload must not reach the server as a
        complete, shorter one. The sender may run before this stream's task sees
        its cancellation, so it checks :attr:`terminated` itself.
        """
        if self._ended_by_edge is None and self._status is None:
            self._ended_by_edge = status
        elif self._ended_by_edge is None:  # the call already ended: still stop taking frames
            self._ended_by_edge = self._status
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)  # wakes the sender, which then sees ``terminated`` and stops
        if self.task is not None:
            self.task.cancel()

    # ---- the stream's task ----

    async def run(self, upstream: Upstream, *, metadata: list[tuple[str, str | bytes]],
                  time_limit: float | None) -> None:
        """Bridge the call and record how it ended (:meth:`finish` reports it)."""
        with server_span(f"edge {self.method.path.lstrip('/')}", metadata, **{"rpc.system": "websocket"}) as current:
            inject(metadata)
            self._metrics.edge_streams.inc()
            try:
                async with asyncio.timeout(time_limit):
                    tried: list[Backend] = []
                    while True:
                        self._status, backend = await self._call(upstream, metadata, time_limit, tried)
                        if backend is None or not self._may_retry(self._status):
                            break
                        draining = status_reason(self._status) == "DRAINING"
                        if draining:
                            upstream.eject(backend, "draining")
                        tried.append(backend)
                        if upstream.pick(tried) is None:
                            break
                        self._metrics.edge_upstream_retries.labels("draining" if draining else "unavailable").inc()
                        self._resend()
            except Exception as exc:  # any failure ends this stream alone, never the socket
                self._status = status_of(exc)
                if self._status is None:
                    log.error("edge stream failed", exc_info=exc, extra={"method": self.method.path})
                    self._status = edge_status(Status.INTERNAL, "edge error", reason="EDGE_INTERNAL")
            finally:
                self._metrics.edge_streams.dec()
            if self._status is not None:
                set_status(current, self._status.code.name, self._status.code.value)

    def finish(self) -> None:
        """Queue the ``close`` frame, once; called when the stream's task is done.

        A done callback rather than a ``finally``: a task cancelled before its
        first step never runs its coroutine, and its stream must close all the same.
        """
        if self.closed:
            return
        self.closed = True
        status = self._ended_by_edge or self._status
        if status is None:
            status = edge_status(Status.CANCELLED, "stream cancelled", reason="CANCELLED")
        fields: dict[str, Any] = {"status": self._codec.connect_status(status)}
        if status.trailers:
            fields["trailers"] = expose(status.trailers)
        self._outbox.push(Frame(FrameType.CLOSE, self.id, fields))

    def _may_retry(self, status: RpcStatus) -> bool:
        """UNAVAILABLE before any response reached the client, on a call whose request can be sent again."""
        if status.code is not Status.UNAVAILABLE or self._responded or self.method.cardinality.client_streaming:
            return False
        return self.method.idempotent or status_reason(status) == "DRAINING"

    def _resend(self) -> None:
        """Queue the request messages already sent, ahead of any not yet sent, for another server."""
        pending = [self._inbox.get_nowait() for _ in range(self._inbox.qsize())]
        for item in [*self._sent, *pending]:
            self._inbox.put_nowait(item)
        self._sent.clear()

    async def _call(self, upstream: Upstream, metadata: list[tuple[str, str | bytes]],
                    time_limit: float | None, avoid: list[Backend]) -> tuple[RpcStatus, Backend | None]:
        opened = upstream.open(self.method, metadata=metadata, timeout=time_limit, avoid=avoid)
        try:
            return await self._bridge(opened), opened.backend
        except Exception as exc:
            status = status_of(exc)
            if status is None:
                raise
            return status, opened.backend

    async def _bridge(self, opened: UpstreamCall) -> RpcStatus:
        async with opened as call:
            sender = asyncio.create_task(self._send(call), name=f"edge-send-{self.id}")
            try:
                return await self._receive(call)
            except GRPCError as exc:
                return call_status(call, exc)
            finally:
                sender.cancel()
                await asyncio.wait([sender])
                if not sender.cancelled() and (error := sender.exception()) is not None:
                    log.debug("edge sender ended", exc_info=error)

    async def _receive(self, call: Stream[bytes, bytes]) -> RpcStatus:
        await call.recv_initial_metadata()
        self._responded = True
        self._outbox.push(Frame(FrameType.HEADERS, self.id, {"metadata": expose(call.initial_metadata.items()
                                                                                   if call.initial_metadata
                                                                                   else ())}))
        while True:
            while self._credit <= 0:
                self._credit_granted.clear()
                await self._credit_granted.wait()
            data = await call.recv_message()
            if data is None:
                break
            self._credit -= 1
            await self._outbox.send(Frame(FrameType.MSG, self.id, message=self._wire.response(self.method, data)))
        await end_sending(call)
        await call.recv_trailing_metadata()
        return call_status(call)

    async def _send(self, call: Stream[bytes, bytes]) -> None:
        try:
            while (item := await self._inbox.get()) is not None:
                if self.terminated:
                    return
                if not self.method.cardinality.client_streaming:
                    self._sent.append(item)  # kept to be sent again if the call moves to another server
                data, end = item
                await call.send_message(data, end=end)
                if end:
                    return
                self._forwarded += 1
                # Grant in batches (half a window) so an upload is not one credit frame per message.
                if self.method.cardinality.client_streaming and self._forwarded * 2 >= self._send_window:
                    self._window += self._forwarded
                    self._outbox.push(Frame(FrameType.CREDIT, self.id, {"n": self._forwarded}))
                    self._forwarded = 0
            if self.terminated:  # never half-close a call the edge ended: the server would take it as complete
                return
            if not self.method.cardinality.client_streaming:
                self._sent.append(None)
            await call.end()
        except (StreamTerminatedError, ProtocolError, H2Error, ConnectionError):
            # The server ended or reset the call while we were sending; the
            # receive side reports the status it sent.
            return
