"""The edge codec: JSON → proto → JSON round trip for every daveloper.v1 message, and the metadata rules."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from daveloper.descriptors import load_descriptor_pool
from daveloper.edge.codec import InvalidMessage, MessageCodec
from daveloper.edge.metadata import InvalidMetadata, MetadataTooLarge, sanitize
from generated.daveloper.v1 import ChatEvent, CreateSessionRequest, WatchResponse

POOL = load_descriptor_pool()
CODEC = MessageCodec(POOL)


def _all_messages() -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        if descriptor.GetOptions().map_entry:
            return
        seen[descriptor.full_name] = descriptor
        for nested in descriptor.nested_types:
            visit(nested)

    for method in CODEC.methods.values():
        for cls in (method.input, method.output):
            file = cls.DESCRIPTOR.file
            if file.package == "daveloper.v1":
                for descriptor in file.message_types_by_name.values():
                    visit(descriptor)
    return sorted(seen.values(), key=lambda d: d.full_name)


MESSAGES = _all_messages()
T = FieldDescriptor


def _scalar(field: FieldDescriptor, n: int) -> Any:
    if field.type in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return -(2**53 + n)  # beyond JavaScript's safe integers: must travel as a string
    if field.type in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return 2**63 + n
    if field.type in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return -7 - n
    if field.type in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return 7 + n
    if field.type in (T.TYPE_FLOAT, T.TYPE_DOUBLE):
        return 1.5 + n
    if field.type == T.TYPE_BOOL:
        return True
    if field.type == T.TYPE_STRING:
        return f"text-{n}-é"
    if field.type == T.TYPE_BYTES:
        return bytes([0, 255, n])
    if field.type == T.TYPE_ENUM:
        return field.enum_type.values[-1].number
    raise AssertionError(field.type)


def populate(message: Message, depth: int = 0) -> Message:
    """Set every field (the first member of each oneof), recursing a few levels."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name):
            continue
        name = field.name
        if field.message_type is not None:
            full = field.message_type.full_name
            if field.message_type.GetOptions().map_entry:
                entry = field.message_type.fields_by_name
                key_field, value_field = entry["key"], entry["value"]
                key = _scalar(key_field, 1)
                container = getattr(message, name)
                if value_field.message_type is not None:
                    populate(container[key], depth + 1)
                else:
                    container[key] = _scalar(value_field, 1)
            elif full == "google.protobuf.Timestamp":
                target = getattr(message, name).add() if _repeated(field) else getattr(message, name)
                target.FromJsonString("2026-11-28T12:34:56.789Z")
            elif full == "google.protobuf.Duration":
                target = getattr(message, name).add() if _repeated(field) else getattr(message, name)
                target.FromJsonString("1.500s")
            elif full.startswith("google.protobuf."):
                continue  # no other well-known types in our protos
            elif depth < 3:
                if _repeated(field):
                    for _ in range(2):
                        populate(getattr(message, name).add(), depth + 1)
                else:
                    populate(getattr(message, name), depth + 1)
        elif _repeated(field):
            getattr(message, name).extend([_scalar(field, 1), _scalar(field, 2)])
        else:
            setattr(message, name, _scalar(field, 1))
    return message


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def test_covers_the_whole_package() -> None:
    names = {d.full_name for d in MESSAGES}
    assert {"daveloper.v1.ChatEvent", "daveloper.v1.UploadRequest", "daveloper.v1.Session"} <= names
    assert len(names) > 50


@pytest.mark.parametrize("descriptor", MESSAGES, ids=lambda d: d.name)
def test_json_proto_json_round_trip(descriptor: Descriptor) -> None:
    cls = message_factory.GetMessageClass(descriptor)
    original = populate(cls())
    as_json = CODEC.to_json(cls, original.SerializeToString())
    data = CODEC.to_bytes(cls, as_json)
    assert cls.FromString(data) == original
    assert CODEC.to_json(cls, data) == as_json


def test_canonical_json_shapes() -> None:
    event = ChatEvent(seq=2**53 + 1, conversation_id="c")
    as_json = CODEC.to_json(CODEC.methods["/daveloper.v1.AgentService/Watch"].output,
                            bytes(WatchResponse(event=event)))
    assert as_json == {"event": {"seq": "9007199254740993", "conversationId": "c"}}
    # Both field-name spellings parse; unknown fields are ignored; the bytes are what betterproto2 reads.
    create = CODEC.methods["/daveloper.v1.SessionService/CreateSession"].input
    data = CODEC.to_bytes(create, {"ttl": "90s", "labels": {"a": "b"}, "someFutureField": 1})
    assert CreateSessionRequest().parse(data).labels == {"a": "b"}
    assert CODEC.to_bytes(create, {"ttl": "90s"}) == CODEC.to_bytes(create, {"ttl": "90s"})
    assert CODEC.to_bytes(create, {"labels": {"a": "b"}}) == CODEC.to_bytes(create, {"labels": {"a": "b"}})


@pytest.mark.parametrize("value", [[], "x", 1, None, {"ttl": 5}, {"labels": []}, {"ttl": "forever"}])
def test_wrong_shapes_are_invalid(value: Any) -> None:
    with pytest.raises(InvalidMessage):
        CODEC.to_bytes(CODEC.methods["/daveloper.v1.SessionService/CreateSession"].input, value)


def test_metadata_sanitising() -> None:
    kept = sanitize({
        "X-Request-Id": "r1", "traceparent": ["00-abc-def-01"], "trace-bin": ["AAEC"],
        "authorization": ["Bearer x"], "grpc-timeout": ["1n"], ":path": ["/x"], "connection": ["close"],
        "x-daveloper-user": ["root"], "x-forwarded-for": ["1.2.3.4"], "x-user-id": ["u"], "te": ["trailers"],
    }, max_bytes=8192)
    assert kept == [("x-request-id", "r1"), ("traceparent", "00-abc-def-01"), ("trace-bin", b"\x00\x01\x02")]
    with pytest.raises(MetadataTooLarge):
        sanitize({"x-a": ["v" * 100]}, max_bytes=50)
    for bad in ([], {"x-a": 1}, {"x-a": ["\n"]}, {"bad key": ["v"]}, {"x-bin": ["!!"]}):
        with pytest.raises(InvalidMetadata):
            sanitize(bad, max_bytes=8192)
