"""The two subprotocols as objects: frame encoding plus how a message value becomes bytes and back."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import WSMsgType

from daveloper.edge.codec import InvalidMessage, MessageCodec, Method
from daveloper.edge.protocol import (
    JSON_SUBPROTOCOL,
    PROTO_SUBPROTOCOL,
    CloseCode,
    Frame,
    ProtocolViolation,
    decode_binary,
    decode_text,
    encode_binary,
    encode_text,
)

__all__ = ["JsonWire", "ProtoWire", "Wire", "wire_for"]


class Wire(Protocol):
    """One subprotocol: the WebSocket message kind it uses and its message representation."""

    name: str

    def decode(self, kind: WSMsgType, data: Any) -> Frame: ...

    def encode(self, frame: Frame) -> str | bytes: ...

    def request(self, method: Method, value: Any) -> bytes:
        """A client message value as protobuf bytes; raises :class:`InvalidMessage`."""
        ...

    def response(self, method: Method, data: bytes) -> Any:
        """An upstream response as this subprotocol's message value."""
        ...


class JsonWire:
    """``daveloper.v1.json``: text frames, ProtoJSON messages."""

    name = JSON_SUBPROTOCOL

    def __init__(self, codec: MessageCodec) -> None:
        self._codec = codec

    def decode(self, kind: WSMsgType, data: Any) -> Frame:
        if kind is not WSMsgType.TEXT:
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"{self.name} takes text frames only")
        return decode_text(data)

    def encode(self, frame: Frame) -> str:
        return encode_text(frame)

    def request(self, method: Method, value: Any) -> bytes:
        return self._codec.to_bytes(method.input, value)

    def response(self, method: Method, data: bytes) -> Any:
        return self._codec.to_json(method.output, data)


class ProtoWire:
    """``daveloper.v1.proto``: binary frames, protobuf messages passed through untouched."""

    name = PROTO_SUBPROTOCOL

    def __init__(self, codec: MessageCodec) -> None:
        self._codec = codec

    def decode(self, kind: WSMsgType, data: Any) -> Frame:
        if kind is not WSMsgType.BINARY:
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"{self.name} takes binary frames only")
        return decode_binary(data)

    def encode(self, frame: Frame) -> bytes:
        return encode_binary(frame)

    def request(self, method: Method, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise InvalidMessage("message must be bytes")
        # Validate here so a malformed message ends the stream with invalid_argument
        # at the edge, as on the JSON subprotocol, rather than as a server-side error.
        self._codec.check_bytes(method.input, value)
        return value

    def response(self, method: Method, data: bytes) -> bytes:
        return data


def wire_for(subprotocol: str, codec: MessageCodec) -> Wire:
    return JsonWire(codec) if subprotocol == JSON_SUBPROTOCOL else ProtoWire(codec)
