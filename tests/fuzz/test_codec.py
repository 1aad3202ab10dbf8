"""Hostile messages at the edge's codec and frame decoders: they decode, or raise their documented error.

``MessageCodec.to_bytes``/``to_json``/``check_bytes`` raise only
:class:`~daveloper.edge.codec.InvalidMessage`; ``decode_text``/``decode_binary``
only :class:`~daveloper.edge.protocol.ProtocolViolation`. The live socket is
fuzzed in ``tests/edge/test_fuzz.py``; this drives the pure functions much harder.
"""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daveloper.descriptors import load_descriptor_pool
from daveloper.edge.codec import InvalidMessage, MessageCodec, b64decode
from daveloper.edge.protocol import FrameType, ProtocolViolation, decode_binary, decode_text
from tests.fuzz.budget import bounded, fuzz

CODEC = MessageCodec(load_descriptor_pool())
METHODS = sorted(CODEC.methods)
UPSERT = CODEC.methods["/daveloper.v1.VectorService/UpsertPoints"]
QUERY = CODEC.methods["/daveloper.v1.VectorService/QueryPoints"]


def _field_names(path: str) -> list[str]:
    descriptor = CODEC.methods[path].input.DESCRIPTOR
    return [name for field in descriptor.fields for name in (field.json_name, field.name)]


scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "18446744073709551616", "1.5", "",
                              "9999999999999999999s", "1.000000001s", "-315576000001s", "AAAA", "!!", "\ud800"])
           | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, object]:
    """A method and a JSON value shaped like its input: real field names, random values."""
    path = draw(st.sampled_from(METHODS))
    names = _field_names(path)
    keys = st.sampled_from(names) | st.text(max_size=6) if names else st.text(max_size=6)
    value: object = draw(st.dictionaries(keys, json_values, max_size=5) | json_values)
    return path, value


def _nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = {"a": [leaf]}
    return leaf


def to_bytes(path: str, value: object) -> None:
    method = CODEC.methods[path]
    # InvalidMessage is the one documented failure: anything else fails the test.
    with bounded("codec to_bytes"), contextlib.suppress(InvalidMessage):
        CODEC.to_bytes(method.input, value)


@fuzz(examples=300)
@given(messages())
def test_json_to_protobuf(case: tuple[str, object]) -> None:
    to_bytes(*case)


@pytest.mark.parametrize("depth", [50, 200, 5_000, 50_000])
def test_deeply_nested_json(depth: int) -> None:
    for path in (UPSERT.path, METHODS[0]):
        to_bytes(path, {"points": [{"payload": _nested(depth, 1)}], "labels": _nested(depth, "x")})


@fuzz(examples=300)
@given(st.sampled_from(METHODS), st.binary(max_size=512))
def test_protobuf_bytes(path: str, data: bytes) -> None:
    method = CODEC.methods[path]
    with bounded("codec bytes"):
        for cls in (method.input, method.output):
            with contextlib.suppress(InvalidMessage):
                CODEC.check_bytes(cls, data)
                CODEC.to_json(cls, data)


def test_deeply_nested_protobuf_bytes() -> None:
    """A Struct nested 10k deep (field 4 of Point, then Value/ListValue): a DecodeError, not a crash."""
    inner = b""
    for _ in range(10_000):
        inner = b"\x0a" + _varint(len(inner)) + inner  # Struct.fields / ListValue.values, length-delimited
    data = b"\x12" + _varint(len(inner) + 1 + len(_varint(len(inner)))) + b"\x22" + _varint(len(inner)) + inner
    with bounded("codec bytes"), pytest.raises(InvalidMessage):
        CODEC.check_bytes(UPSERT.input, data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


@fuzz(examples=200)
@given(st.text(max_size=40))
def test_base64(text: str) -> None:
    with contextlib.suppress(InvalidMessage):
        b64decode(text)


frame_texts = st.one_of(
    st.text(max_size=60),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from([t.wire_name for t in FrameType] + ["x"])},
                          optional={"id": json_values | st.integers(-1, 2**32), "end": json_values,
                                    "message": json_values}).map(json.dumps),
    st.integers(1, 100_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 100_000).map(lambda depth: '{"type":"msg","id":1,"message":' + '{"a":' * depth + "1"
                                + "}" * depth + "}"),
)


@fuzz(examples=300)
@given(frame_texts)
def test_text_frames(text: str) -> None:
    with bounded("frame text"), contextlib.suppress(ProtocolViolation):
        decode_text(text)


def _frame(kind: FrameType, stream_id: int, fields: object) -> bytes:
    body = json.dumps(fields).encode()
    if kind is FrameType.OPEN:
        body = struct.pack(">I", len(body)) + body
    return struct.pack(">BBI", kind, 0, stream_id) + body


binary_frames = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.sampled_from(list(FrameType)) | st.integers(0, 255), st.integers(0, 255),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: struct.pack(">BBII", int(t[0]), t[1], t[2], t[3]) + t[4]),
    st.tuples(st.sampled_from(list(FrameType)), st.integers(1, 5), json_values).map(lambda t: _frame(*t)),
)


@fuzz(examples=300)
@given(binary_frames)
def test_binary_frames(data: bytes) -> None:
    with bounded("frame binary"), contextlib.suppress(ProtocolViolation):
        decode_binary(data)


# --- regressions: inputs that once escaped the codec (daveloper/edge/codec.py) ---


def test_huge_integer_in_a_struct_is_an_invalid_message() -> None:
    # json.loads turns a 400-digit number into an int; ParseDict's float() of it overflows.
    value = json.loads('{"points": [{"payload": {"a": 1' + "0" * 400 + "}}]}")
    with pytest.raises(InvalidMessage):
        CODEC.to_bytes(UPSERT.input, value)


def test_nan_in_a_struct_is_an_invalid_message_in_json() -> None:
    # Valid protobuf (a client may send it on daveloper.v1.proto) that ProtoJSON cannot express.
    data = CODEC.to_bytes(UPSERT.input, {"points": [{"payload": {"a": float("nan")}}]})
    with pytest.raises(InvalidMessage):
        CODEC.to_json(UPSERT.input, data)


def test_out_of_range_timestamp_is_an_invalid_message_in_json() -> None:
    # CreateSessionResponse.session (field 1) .create_time (field 2).
    method = CODEC.methods["/daveloper.v1.SessionService/CreateSession"]
    timestamp = b"\x08" + _varint(2**63 - 1)  # seconds far past year 9999
    session = b"\x12" + _varint(len(timestamp)) + timestamp
    data = b"\x0a" + _varint(len(session)) + session
    with pytest.raises(InvalidMessage):
        CODEC.to_json(method.output, data)
