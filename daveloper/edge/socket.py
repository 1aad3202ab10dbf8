"""One WebSocket: handshake, the frame loop, and the streams it carries.

The socket's handler task reads frames; a task group it owns holds the
writer task (:class:`~daveloper.edge.stream.Outbox`) and one task per
stream. Stream problems end one stream with a ``close`` frame; protocol
violations close the socket with a 4xxx code (see ``docs/websocket-protocol.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSMsgType, web
from grpclib.const import Cardinality, Status

from daveloper.edge.codec import InvalidMessage
from daveloper.edge.metadata import InvalidMetadata, MetadataTooLarge, sanitize
from daveloper.edge.protocol import ABSENT, CloseCode, Frame, FrameType, ProtocolViolation
from daveloper.edge.state import EdgeState, credentials
from daveloper.edge.status import RpcStatus, edge_status
from daveloper.edge.stream import BridgedStream, Outbox, StreamError
from daveloper.edge.wire import Wire

__all__ = ["DEFAULT_CREDIT", "SEND_WINDOW", "UNARY_TIMEOUT", "EdgeSocket"]

log = logging.getLogger("daveloper.edge")

#: Response messages a stream may receive before the client grants more (``open.credit`` overrides).
DEFAULT_CREDIT = 16
#: Request messages a client may send on a stream before the edge grants more.
SEND_WINDOW = 16
#: Deadline of unary calls whose ``open`` sets no ``timeoutMs`` (streams have none by default).
UNARY_TIMEOUT = 60.0
#: How long a closing socket waits for queued frames to be written.
_FLUSH_SECONDS = 1.0

_CLIENT_FRAMES = frozenset({FrameType.OPEN, FrameType.MSG, FrameType.END, FrameType.CANCEL,
                            FrameType.CREDIT, FrameType.PING, FrameType.PONG})


def _int_field(fields: dict[str, Any], name: str, *, minimum: int, default: int | None) -> int | None:
    value = fields.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 2**31 - 1:
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"{name} must be an integer >= {minimum}")
    return value


class EdgeSocket:
    """Serves one accepted WebSocket until it closes."""

    def __init__(self, ws: web.WebSocketResponse, wire: Wire, state: EdgeState, *, client_address: str = "") -> None:
        self._ws = ws
        #: Sent upstream with every call, for per-address rate limits and the audit log.
        self.client_address = client_address
        self._wire = wire
        self._state = state
        self._settings = state.settings
        self._outbox = Outbox(ws, wire)
        self._streams: dict[int, BridgedStream] = {}
        self._last_id = 0
        self._token = ""
        self._session_id = ""
        self._tasks: asyncio.TaskGroup | None = None
        self._going_away = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def serve(self) -> None:
        """Run the socket; returns when it is closed (by either side)."""
        code, reason = CloseCode.NORMAL, ""
        admitted = False
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            writer = tasks.create_task(self._outbox.run(), name="edge-writer")
            try:
                await self._handshake()
                admitted = True
                await self._read_loop()
                code = CloseCode.GOING_AWAY if self._going_away else CloseCode.NORMAL
            except ProtocolViolation as violation:
                code, reason = violation.code, violation.reason
                log.info("websocket protocol violation", extra={"code": int(code), "reason": reason})
            finally:
                await self._end_streams(edge_status(Status.CANCELLED, "socket closed", reason="SOCKET_CLOSED"))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FLUSH_SECONDS):
                        await self._outbox.flush()
                writer.cancel()
                if admitted:
                    self._state.release(self._session_id)
        await self._ws.close(code=code, message=reason.encode())

    async def go_away(self) -> None:
        """Tell the client to open no more streams here (drain has begun)."""
        self._outbox.push(Frame(FrameType.GOAWAY, 0, {"lastId": self._last_id, "reason": "server shutting down"}))

    async def shut_down(self) -> None:
        """End the remaining streams with UNAVAILABLE and close with 1001."""
        self._going_away = True
        await self._end_streams(edge_status(Status.UNAVAILABLE, "server is shutting down", reason="DRAINING"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FLUSH_SECONDS):
                await self._outbox.flush()
        await self._ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")

    async def _end_streams(self, status: RpcStatus) -> None:
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        for stream in list(self._streams.values()):
            stream.terminate(status)
        if tasks:
            await asyncio.wait(tasks)

    # ---- reading ----

    async def _receive(self, wait: float) -> Frame | None:
        """The next frame, or ``None`` once the peer has gone; ``TimeoutError`` after ``wait`` seconds."""
        msg = await self._ws.receive(timeout=wait)
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return self._wire.decode(msg.type, msg.data)
        # CLOSE/CLOSING/CLOSED, or ERROR (e.g. over max_msg_size: aiohttp already closed with 1009).
        return None

    async def _handshake(self) -> None:
        try:
            frame = await self._receive(self._state.handshake_seconds)
        except TimeoutError:
            raise ProtocolViolation(CloseCode.TIMEOUT, "no hello frame in time") from None
        if frame is None:
            return
        if frame.type is not FrameType.HELLO:
            raise ProtocolViolation(CloseCode.UNAUTHENTICATED, "the first frame must be hello")
        token = frame.fields.get("token", "")
        if not isinstance(token, str):
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "hello: token must be a string")
        self._session_id = await self._state.admit(token, self.client_address)
        self._token = token
        settings = self._settings
        self._outbox.push(Frame(FrameType.WELCOME, 0, {
            "session": self._session_id,
            "limits": {
                "maxFrameBytes": settings.ws_max_frame_bytes,
                "maxMessageBytes": settings.max_message_bytes,
                "maxStreams": settings.ws_max_streams,
                "maxMetadataBytes": settings.ws_max_metadata_bytes,
                "idleTimeoutMs": int(settings.ws_idle_seconds * 1000),
                "initialCredit": DEFAULT_CREDIT,
                "sendWindow": SEND_WINDOW,
                # Long streams send a heartbeat after this much quiet (0: never): with it a client
                # can tell a stalled stream from slow work without guessing the server's setting.
                "heartbeatMs": int(settings.heartbeat_seconds * 1000),
            },
        }))

    async def _read_loop(self) -> None:
        idle = self._settings.ws_idle_seconds
        while not self._ws.closed:
            try:
                frame = await self._receive(idle)
            except TimeoutError:
                if self._streams:
                    continue  # quiet but busy (e.g. a long server stream): not idle
                raise ProtocolViolation(CloseCode.TIMEOUT, "idle") from None
            if frame is None:
                return
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type not in _CLIENT_FRAMES:
            kind = "repeated hello" if frame.type is FrameType.HELLO else f"{frame.type.wire_name} is server-only"
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, kind)
        if frame.type is FrameType.PING:
            self._outbox.push(Frame(FrameType.PONG, 0, {k: v for k, v in frame.fields.items() if k == "data"}))
            return
        if frame.type is FrameType.PONG:
            return
        if frame.type is FrameType.OPEN:
            self._open(frame)
            return
        stream = self._streams.get(frame.id)
        if stream is None or stream.closed:
            if frame.id > self._last_id:
                raise ProtocolViolation(CloseCode.UNKNOWN_STREAM, f"stream {frame.id} was never opened")
            return  # a stream that already ended: frames racing its close are dropped
        try:
            if frame.type is FrameType.MSG:
                if frame.message is ABSENT:
                    raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "msg without message")
                stream.deliver(self._request(stream, frame.message), end=frame.end)
            elif frame.type is FrameType.END:
                stream.end()
            elif frame.type is FrameType.CREDIT:
                n = _int_field(frame.fields, "n", minimum=1, default=None)
                if n is None:
                    raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "credit without n")
                stream.grant(n)
            else:  # CANCEL
                stream.terminate(edge_status(Status.CANCELLED, "cancelled by the client", reason="CANCELLED"))
        except StreamError as error:
            stream.terminate(error.status)

    def _request(self, stream: BridgedStream, value: Any) -> bytes:
        try:
            data = self._wire.request(stream.method, value)
        except InvalidMessage as exc:
            raise StreamError(edge_status(
                Status.INVALID_ARGUMENT, f"invalid {stream.method.input.DESCRIPTOR.full_name}: {exc}",
                reason="INVALID_MESSAGE", violations=[("message", str(exc))])) from None
        if len(data) > self._settings.max_message_bytes:
            raise StreamError(edge_status(
                Status.RESOURCE_EXHAUSTED, f"message exceeds {self._settings.max_message_bytes} bytes",
                reason="MESSAGE_TOO_LARGE"))
        return data

    # ---- opening streams ----

    def _refuse(self, stream_id: int, status: RpcStatus) -> None:
        self._outbox.push(Frame(FrameType.CLOSE, stream_id, {"status": self._state.codec.connect_status(status)}))

    def _open(self, frame: Frame) -> None:
        if frame.id <= self._last_id:
            raise ProtocolViolation(CloseCode.STREAM_ID_REUSE, f"stream id {frame.id} is not above {self._last_id}")
        self._last_id = frame.id
        path = frame.fields.get("method")
        if not isinstance(path, str):
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "open: method must be a string")
        timeout_ms = _int_field(frame.fields, "timeoutMs", minimum=0, default=None)
        credit = _int_field(frame.fields, "credit", minimum=0, default=DEFAULT_CREDIT)
        assert credit is not None
        if self._state.draining or self._going_away:
            self._refuse(frame.id, edge_status(Status.UNAVAILABLE, "server is shutting down", reason="DRAINING"))
            return
        if len(self._streams) >= self._settings.ws_max_streams:
            self._refuse(frame.id, edge_status(
                Status.RESOURCE_EXHAUSTED, f"at most {self._settings.ws_max_streams} streams per socket",
                reason="TOO_MANY_STREAMS"))
            return
        method = self._state.codec.methods.get(path)
        if method is None:
            self._refuse(frame.id, edge_status(Status.UNIMPLEMENTED, f"unknown method {path[:200]}",
                                               reason="UNKNOWN_METHOD"))
            return
        try:
            metadata = sanitize(frame.fields.get("metadata"), max_bytes=self._settings.ws_max_metadata_bytes)
        except MetadataTooLarge as exc:
            self._refuse(frame.id, edge_status(Status.RESOURCE_EXHAUSTED, str(exc), reason="METADATA_TOO_LARGE"))
            return
        except InvalidMetadata as exc:
            self._refuse(frame.id, edge_status(Status.INVALID_ARGUMENT, str(exc), reason="INVALID_METADATA",
                                               violations=[("metadata", str(exc))]))
            return
        stream = BridgedStream(frame.id, method, outbox=self._outbox, wire=self._wire, codec=self._state.codec,
                               credit=credit, send_window=SEND_WINDOW, metrics=self._state.metrics)
        try:
            if frame.message is not ABSENT:
                stream.deliver(self._request(stream, frame.message), end=frame.end)
            elif frame.end:
                stream.end()
        except StreamError as error:
            self._refuse(frame.id, error.status)
            return
        if timeout_ms:  # absent or 0: the default
            timeout: float | None = timeout_ms / 1000
        else:
            timeout = UNARY_TIMEOUT if method.cardinality is Cardinality.UNARY_UNARY else None
        assert self._tasks is not None
        self._streams[frame.id] = stream
        self._idle.clear()
        upstream_metadata = [*metadata, *credentials(self._token, self.client_address)]
        stream.task = self._tasks.create_task(
            stream.run(self._state.upstream, metadata=upstream_metadata, time_limit=timeout),
            name=f"edge-stream-{frame.id}")
        stream.task.add_done_callback(lambda _: self._stream_done(stream))

    def _stream_done(self, stream: BridgedStream) -> None:
        stream.finish()
        self._streams.pop(stream.id, None)
        if not self._streams:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no stream is open."""
        await self._idle.wait()
