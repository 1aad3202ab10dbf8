"""The WebSocket protocol's vocabulary: subprotocols, frames, close codes, and both wire encodings.

Specified in ``docs/websocket-protocol.md``; this module is its executable
half. A :class:`Frame` is the same in both subprotocols. What differs is only
the wire form and the request/response message inside ``msg`` and ``open``:

* ``daveloper.v1.json``: one text WebSocket message per frame, a JSON object
  ``{"type": ..., "id": ..., ...}``; messages are ProtoJSON objects.
* ``daveloper.v1.proto``: one binary WebSocket message per frame: a 6-byte
  header (type u8, flags u8, stream id u32 big-endian), then the body. ``msg``
  bodies are raw protobuf; ``open`` bodies are a u32 big-endian length, that
  many bytes of JSON fields, then (flag ``HAS_MESSAGE``) the raw first message;
  every other body is the JSON object of the frame's fields (empty = ``{}``).
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "JSON_SUBPROTOCOL",
    "MAX_STREAM_ID",
    "PROTO_SUBPROTOCOL",
    "SUBPROTOCOLS",
    "CloseCode",
    "Frame",
    "FrameType",
    "ProtocolViolation",
    "decode_binary",
    "decode_text",
    "encode_binary",
    "encode_text",
]

JSON_SUBPROTOCOL = "daveloper.v1.json"
PROTO_SUBPROTOCOL = "daveloper.v1.proto"
SUBPROTOCOLS = (JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL)
MAX_STREAM_ID = 2**31 - 1


class CloseCode(enum.IntEnum):
    """WebSocket close codes the edge sends (the table in the protocol document)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # after go-away and drain
    MESSAGE_TOO_BIG = 1009  # a frame over the size limit (sent by aiohttp itself)
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the upstream could not check the handshake token
    MALFORMED_FRAME = 4400  # not a frame, unknown type, wrong field types, wrong message kind
    UNAUTHENTICATED = 4401  # first frame is not hello, or the token was refused
    UNKNOWN_STREAM = 4404  # a frame for a stream id that was never opened
    TIMEOUT = 4408  # no hello in time, or idle
    STREAM_ID_REUSE = 4409  # open with an id not above every earlier one
    TOO_MANY_SOCKETS = 4429  # the session already holds the maximum number of sockets


class ProtocolViolation(Exception):
    """The peer broke the protocol: the socket closes with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # a close reason must fit 123 bytes


class FrameType(enum.IntEnum):
    """Frame types; the number is the type byte of the binary encoding."""

    HELLO = 1
    WELCOME = 2
    OPEN = 3
    MSG = 4
    END = 5
    CANCEL = 6
    HEADERS = 7
    CLOSE = 8
    CREDIT = 9
    PING = 10
    PONG = 11
    GOAWAY = 12

    @property
    def wire_name(self) -> str:
        return self.name.lower()


_BY_NAME = {t.wire_name: t for t in FrameType}
_HEADER = struct.Struct(">BBI")
_LENGTH = struct.Struct(">I")
FLAG_END = 0x01
FLAG_HAS_MESSAGE = 0x02


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: ``Frame.message`` when the frame carries none (an empty protobuf message is ``b""``).
ABSENT: Any = _Absent()


@dataclass(slots=True)
class Frame:
    """One frame, independent of its encoding."""

    type: FrameType
    #: Stream id (0 for connection frames).
    id: int = 0
    #: The frame's other fields, as in the JSON encoding (``method``, ``n``, ``status``, ...).
    fields: dict[str, Any] = field(default_factory=dict)
    #: A ProtoJSON value (JSON subprotocol) or protobuf bytes (binary), or :data:`ABSENT`.
    message: Any = ABSENT
    #: ``msg``/``open``: half-close after this message.
    end: bool = False


def _stream_id(value: object, frame_type: FrameType) -> int:
    if frame_type in (FrameType.HELLO, FrameType.PING, FrameType.PONG):
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STREAM_ID:
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"{frame_type.wire_name}: id must be 1..2^31-1")
    return value


def decode_text(text: str) -> Frame:
    """Parse one JSON-subprotocol frame, or raise :class:`ProtocolViolation`."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "frame must be a JSON object")
    kind = data.pop("type", None)
    frame_type = _BY_NAME.get(kind) if isinstance(kind, str) else None
    if frame_type is None:
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"unknown frame type {str(kind)[:40]!r}")
    stream_id = _stream_id(data.pop("id", None), frame_type)
    message = data.pop("message", ABSENT)
    end = data.pop("end", False)
    if not isinstance(end, bool):
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "end must be a boolean")
    return Frame(frame_type, stream_id, data, message, end)


def encode_text(frame: Frame) -> str:
    data: dict[str, Any] = {"type": frame.type.wire_name}
    if frame.id:
        data["id"] = frame.id
    data.update(frame.fields)
    if frame.message is not ABSENT:
        data["message"] = frame.message
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "frame body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "frame body must be a JSON object")
    return data


def decode_binary(data: bytes) -> Frame:
    """Parse one binary-subprotocol frame, or raise :class:`ProtocolViolation`."""
    if len(data) < _HEADER.size:
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "frame shorter than its 6-byte header")
    type_byte, flags, raw_id = _HEADER.unpack_from(data)
    try:
        frame_type = FrameType(type_byte)
    except ValueError:
        raise ProtocolViolation(CloseCode.MALFORMED_FRAME, f"unknown frame type {type_byte}") from None
    stream_id = _stream_id(raw_id, frame_type)
    body = data[_HEADER.size:]
    end = bool(flags & FLAG_END)
    if frame_type is FrameType.MSG:
        return Frame(frame_type, stream_id, {}, body, end)
    if frame_type is FrameType.OPEN:
        if len(body) < _LENGTH.size:
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "open: missing field length")
        (length,) = _LENGTH.unpack_from(body)
        if length > len(body) - _LENGTH.size:
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "open: field length beyond frame")
        fields = _json_body(body[_LENGTH.size:_LENGTH.size + length])
        rest = body[_LENGTH.size + length:]
        message = rest if flags & FLAG_HAS_MESSAGE else ABSENT
        if message is ABSENT and rest:
            raise ProtocolViolation(CloseCode.MALFORMED_FRAME, "open: bytes after fields without HAS_MESSAGE")
        return Frame(frame_type, stream_id, fields, message, end)
    return Frame(frame_type, stream_id, _json_body(body), ABSENT, end)


def encode_binary(frame: Frame) -> bytes:
    flags = FLAG_END if frame.end else 0
    if frame.type is FrameType.MSG:
        body: bytes = frame.message
    else:
        fields = json.dumps(frame.fields, separators=(",", ":")).encode() if frame.fields else b""
        if frame.type is FrameType.OPEN:
            body = _LENGTH.pack(len(fields)) + fields
            if frame.message is not ABSENT:
                flags |= FLAG_HAS_MESSAGE
                body += frame.message
        else:
            body = fields
    return _HEADER.pack(frame.type, flags, frame.id) + body
