"""upb encoding of betterproto2 messages: every generated message, filled every way, parses back the same."""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator
from typing import Any

import betterproto2
import pytest
from google.protobuf import message_factory

import generated.daveloper.v1 as v1
import generated.google.protobuf as wkt
from daveloper.descriptors import load_descriptor_pool
from daveloper.rpc import upb

SCALARS: dict[str, Any] = {
    betterproto2.TYPE_STRING: "héllo", betterproto2.TYPE_BYTES: b"\x00\xff", betterproto2.TYPE_BOOL: True,
    betterproto2.TYPE_DOUBLE: -2.5, betterproto2.TYPE_FLOAT: 1.5, betterproto2.TYPE_INT32: -7,
    betterproto2.TYPE_INT64: -(2**40), betterproto2.TYPE_UINT32: 2**31, betterproto2.TYPE_UINT64: 2**63,
    betterproto2.TYPE_SINT32: -3, betterproto2.TYPE_SINT64: -(2**50), betterproto2.TYPE_FIXED32: 9,
    betterproto2.TYPE_FIXED64: 2**60, betterproto2.TYPE_SFIXED32: -9, betterproto2.TYPE_SFIXED64: -(2**60),
}
WHEN = datetime.datetime(2026, 12, 6, 3, 4, 5, 678901, tzinfo=datetime.UTC)
ZERO_WHEN = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _messages() -> list[type[betterproto2.Message]]:
    return [cls for module in (v1, wkt) for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, betterproto2.Message) and cls is not betterproto2.Message]


def _value(cls: type[betterproto2.Message], name: str, meta: Any, depth: int, zero: bool) -> Any:
    kind = meta.proto_type
    if meta.unwrap is not None:
        wrapped = meta.unwrap().__name__
        if wrapped == "Timestamp":
            return ZERO_WHEN if zero else WHEN
        if wrapped == "Duration":
            # Positive: betterproto2 writes a negative one off-spec (nanos of the opposite sign), upb to spec.
            return datetime.timedelta(0) if zero else datetime.timedelta(seconds=1.25)
        raise AssertionError(f"no sample for {wrapped}")
    if kind == betterproto2.TYPE_MESSAGE:
        nested = cls._betterproto.cls_by_field[name]
        return _filled(nested, depth + 1, zero) if depth < 3 else nested()
    if kind == betterproto2.TYPE_ENUM:
        members = list(cls._betterproto.cls_by_field[name])
        return members[0] if zero else members[-1]
    if kind == betterproto2.TYPE_MAP:
        key_meta, value_meta = meta.map_meta
        key = SCALARS[key_meta.proto_type]
        value_cls = cls._betterproto.cls_by_field[name + ".value"]
        if value_meta.proto_type == betterproto2.TYPE_MESSAGE:
            value = _filled(value_cls, depth + 1, zero) if depth < 3 else value_cls()
        elif value_meta.proto_type == betterproto2.TYPE_ENUM:
            value = list(value_cls)[-1]
        else:
            value = SCALARS[value_meta.proto_type]
        return {key: value, (key * 2 if isinstance(key, str) else key + 1): value}
    value = SCALARS[kind]
    return type(value)() if zero else value


def _filled(cls: type[betterproto2.Message], depth: int = 0, zero: bool = False, group_choice: int = 0) -> Any:
    """Every field set (``zero``: to its zero value, which presence must still carry), one member per oneof."""
    values: dict[str, Any] = {}
    members: dict[str, list[str]] = {}
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group:
            members.setdefault(meta.group, []).append(name)
    chosen = {names[group_choice % len(names)] for names in members.values()}
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group and name not in chosen:
            continue
        value = _value(cls, name, meta, depth, zero)
        if meta.repeated and meta.proto_type != betterproto2.TYPE_MAP:
            value = [value, value]
        values[name] = value
    return cls(**values)


def _samples(cls: type[betterproto2.Message]) -> Iterator[betterproto2.Message]:
    yield cls()
    groups = max([len([n for n, m in cls._betterproto.meta_by_field_name.items() if m.group == g])
                  for g in {m.group for m in cls._betterproto.meta_by_field_name.values() if m.group}] or [1])
    for choice in range(groups):
        yield _filled(cls, group_choice=choice)
        yield _filled(cls, zero=True, group_choice=choice)


@pytest.fixture(scope="module")
def pool() -> Any:
    return load_descriptor_pool()


def _upb_class(pool: Any, message: betterproto2.Message) -> Any:
    url = upb.default_message_pool.type_to_url[type(message)]
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(url.rpartition("/")[2]))


def test_every_generated_message_parses_back_the_same_and_reads_the_same_to_upb(pool: Any) -> None:
    samples = [sample for cls in _messages() for sample in _samples(cls)]
    assert len(samples) > 300
    for sample in samples:
        encoded = upb.encode(sample)
        assert type(sample).parse(encoded) == sample, type(sample).__name__
        reference = _upb_class(pool, sample)
        assert reference.FromString(encoded) == reference.FromString(bytes(sample)), type(sample).__name__


def test_the_messages_of_the_chat_path_are_encoded_by_upb() -> None:
    for cls in (v1.ChatEvent, v1.ChatResponse, v1.Turn, v1.Conversation, v1.GetSessionResponse, wkt.Struct):
        assert upb._plan(cls) is not None, cls.__name__


def test_a_message_with_unknown_fields_is_left_to_betterproto2() -> None:
    parsed = v1.Usage.parse(bytes(v1.Usage(prompt_tokens=3)) + b"\xf8\x01\x05")  # field 31, varint 5: unknown here
    assert parsed._unknown_fields
    assert upb.encode(parsed) == bytes(parsed)
    wrapped = v1.TurnCompleted(usage=parsed)
    assert upb.encode(wrapped) == bytes(wrapped)


def test_encoding_is_byte_for_byte_betterproto2s_for_a_turns_end() -> None:
    event = v1.ChatEvent(conversation_id="c1", turn_id="turn_1", create_time=WHEN, turn_completed=v1.TurnCompleted(
        finish_reason=v1.FinishReason.STOP, usage=v1.Usage(prompt_tokens=100, completion_tokens=15, total_tokens=115),
        text="an answer [1]", time_to_first_token=datetime.timedelta(seconds=0.125),
        duration=datetime.timedelta(seconds=30)))
    assert upb.encode(event) == bytes(event)


def test_a_message_of_protobufs_own_runtime_serializes_itself() -> None:
    from grpclib.health.v1.health_pb2 import HealthCheckResponse

    response = HealthCheckResponse(status=HealthCheckResponse.SERVING)
    assert upb.encode(response) == response.SerializeToString()
