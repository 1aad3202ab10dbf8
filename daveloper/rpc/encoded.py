"""Messages that are already protobuf bytes, and the server codec that sends them as they are.

The event log stores every event serialized once, when it is appended. A
stream that forwards stored events (Chat, Watch, WatchJob, WatchIngestion)
would otherwise decode each entry into a betterproto2 message only for the
codec to encode it again, per listening stream: the two costliest steps of the
event path. :class:`Encoded` marks bytes the :class:`PassThroughCodec` writes
unchanged; every other message is a betterproto2 message the servicers built,
serialized by upb (:mod:`daveloper.rpc.upb`).

A streamed response wraps the stored event (``WatchResponse { ChatEvent event = 1; }``),
and the log assigns the event's ``seq`` outside the payload. Protobuf's wire
format composes by concatenation, so :func:`wrap_event` builds the response
from the stored bytes: the wrapper's field tag and length, then the event's
``seq`` field, then the stored payload (which never carries a ``seq``: the log
assigns it). Fields then appear in field-number order, exactly as an encoder
would write them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor_pool import DescriptorPool
from grpclib.encoding.proto import ProtoCodec

from daveloper.descriptors import load_descriptor_pool
from daveloper.rpc import upb
from daveloper.rpc.decoding import RequestValidator

__all__ = ["Encoded", "PassThroughCodec", "length_delimited_fields", "varint", "wrap_event"]

_LEN = 2  # wire type of strings, bytes and messages
_VARINT = 0


class Encoded(bytes):
    """A message that is already serialized: sent as these bytes, never re-encoded."""

    __slots__ = ()


class PassThroughCodec(ProtoCodec):
    """grpclib's protobuf codec, except that :class:`Encoded` messages go out untouched
    and request bytes are checked before they are decoded (:class:`~daveloper.rpc.decoding.RequestValidator`).

    Pass it (with grpclib's ``ProtoStatusDetailsCodec``: a server given a
    codec gets no status-details codec by default) to ``grpclib.server.Server``.
    ``pool`` describes the served messages (default: :func:`~daveloper.descriptors.load_descriptor_pool`).
    """

    def __init__(self, pool: DescriptorPool | None = None) -> None:
        self._requests = RequestValidator(pool if pool is not None else load_descriptor_pool())

    def encode(self, message: Any, message_type: Any) -> bytes:
        if type(message) is Encoded:
            return message
        if not isinstance(message, message_type):
            raise TypeError(f"Message must be of type {message_type!r}, not {type(message)!r}")
        return upb.encode(message)  # serialized by upb (:mod:`daveloper.rpc.upb`)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return self._requests.decode(data, message_type)


def varint(value: int) -> bytes:
    """``value`` (≥ 0) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def wrap_event(payload: bytes, seq: int, *, event_field: int = 1, seq_field: int = 1) -> Encoded:
    """A response whose field ``event_field`` is the stored event ``payload`` with its ``seq`` set.

    ``payload`` must not carry field ``seq_field`` itself (the log's payloads
    never do); ``seq`` ≥ 1.
    """
    event = _tag(seq_field, _VARINT) + varint(seq) + payload
    return Encoded(_tag(event_field, _LEN) + varint(len(event)) + event)


def length_delimited_fields(payload: bytes) -> dict[int, bytes]:
    """The top-level length-delimited fields (strings, bytes, messages) of a serialized message, by number.

    Scans the wire format without building a message (the Chat stream reads a
    stored event's turn id and kind this way); the last occurrence of a field
    wins, as in protobuf. Raises ``ValueError`` on malformed bytes.
    """
    found: dict[int, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end:
        key, pos = _read_varint(payload, pos)
        wire_type = key & 7
        if wire_type == _VARINT:
            _, pos = _read_varint(payload, pos)
        elif wire_type == _LEN:
            size, pos = _read_varint(payload, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            found[key >> 3] = payload[pos:pos + size]
            pos += size
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != end:
        raise ValueError("truncated field")
    return found


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
