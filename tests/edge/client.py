"""A small test client for the edge's WebSocket protocol, written from docs/websocket-protocol.md.

Binary frames are packed here by hand (not with the edge's own encoder), so
the tests check the documented wire format.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import aiohttp

from daveloper.edge import Edge

JSON = "daveloper.v1.json"
PROTO = "daveloper.v1.proto"
TYPES = {"hello": 1, "welcome": 2, "open": 3, "msg": 4, "end": 5, "cancel": 6, "headers": 7, "close": 8,
         "credit": 9, "ping": 10, "pong": 11, "goaway": 12}
NAMES = {v: k for k, v in TYPES.items()}
FLAG_END, FLAG_HAS_MESSAGE = 0x01, 0x02
TIMEOUT = 10.0


def pack(kind: str, stream_id: int = 0, *, fields: dict[str, Any] | None = None, message: bytes | None = None,
         end: bool = False) -> bytes:
    """A binary-subprotocol frame: type u8, flags u8, id u32 BE, body."""
    flags = FLAG_END if end else 0
    encoded = json.dumps(fields).encode() if fields else b""
    if kind == "msg":
        body = message or b""
    elif kind == "open":
        body = struct.pack(">I", len(encoded)) + encoded
        if message is not None:
            flags |= FLAG_HAS_MESSAGE
            body += message
    else:
        body = encoded
    return struct.pack(">BBI", TYPES[kind], flags, stream_id) + body


def unpack(data: bytes) -> dict[str, Any]:
    """A binary frame as the JSON-subprotocol dict (``message`` stays bytes)."""
    kind, flags, stream_id = struct.unpack_from(">BBI", data)
    body = data[6:]
    frame: dict[str, Any] = {"type": NAMES[kind]}
    if stream_id:
        frame["id"] = stream_id
    if flags & FLAG_END:
        frame["end"] = True
    if NAMES[kind] == "msg":
        frame["message"] = body
    elif body:
        frame.update(json.loads(body))
    return frame


class Client:
    """One socket; speaks either subprotocol with JSON-shaped dicts."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.welcome: dict[str, Any] = {}
        self.pending: dict[int, list[dict[str, Any]]] = {}

    @property
    def binary(self) -> bool:
        return self.protocol == PROTO

    async def send(self, frame: dict[str, Any]) -> None:
        if self.binary:
            frame = dict(frame)
            kind = frame.pop("type")
            stream_id = frame.pop("id", 0)
            message = frame.pop("message", None)
            end = frame.pop("end", False)
            await self.ws.send_bytes(pack(kind, stream_id, fields=frame, message=message, end=end))
        else:
            await self.ws.send_str(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.TEXT:
            frame: dict[str, Any] = json.loads(msg.data)
            return frame
        if msg.type is aiohttp.WSMsgType.BINARY:
            return unpack(msg.data)
        # The code of the close frame the server sent (after a server-initiated close the
        # transport may already be gone when aiohttp replies, which it records as 1006).
        code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
        return {"type": "socket-closed", "code": code, "reason": str(msg.extra or "")}

    async def until_close(self, stream_id: int) -> list[dict[str, Any]]:
        """Frames of one stream up to and including its ``close`` (others are skipped)."""
        frames = self.pending.pop(stream_id, [])
        while not frames or frames[-1]["type"] != "close":
            frame = await self.recv()
            if frame["type"] == "socket-closed":
                raise AssertionError(f"socket closed before stream {stream_id} closed: {frame}")
            if frame.get("id") == stream_id:
                frames.append(frame)
            elif "id" in frame:  # another stream's: keep it for its own until_close
                self.pending.setdefault(frame["id"], []).append(frame)
        return frames

    async def call(self, stream_id: int, method: str, message: Any, **extra: Any) -> list[dict[str, Any]]:
        """Open a stream with one message and half-close; all its frames up to close."""
        await self.send({"type": "open", "id": stream_id, "method": method, "message": message, "end": True,
                         **extra})
        return await self.until_close(stream_id)

    async def closed(self) -> tuple[int | None, str]:
        """Read until the socket closes; its close code and reason."""
        while True:
            frame = await self.recv()
            if frame["type"] == "socket-closed":
                return frame["code"], frame["reason"]


async def connect(http: aiohttp.ClientSession, edge: Edge, *, protocol: str = JSON, token: str = "",
                  hello: bool = True) -> Client:
    ws = await http.ws_connect(f"{edge.url}/ws", protocols=(protocol,), autoping=True)
    client = Client(ws, protocol)
    if hello:
        await client.send({"type": "hello", "token": token})
        client.welcome = await client.recv()
        assert client.welcome["type"] == "welcome", client.welcome
    return client


def status(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The status of a stream's frames, checking that close came last and once."""
    assert [f["type"] for f in frames].count("close") == 1
    assert frames[-1]["type"] == "close"
    result: dict[str, Any] = frames[-1]["status"]
    return result


def messages(frames: list[dict[str, Any]]) -> list[Any]:
    return [f["message"] for f in frames if f["type"] == "msg"]
