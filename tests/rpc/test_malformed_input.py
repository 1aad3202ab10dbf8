"""Malformed request bytes over real gRPC sockets: INVALID_ARGUMENT with a BadRequest detail, never INTERNAL.

The requests are raw frames (a bytes-in, bytes-out client codec), so they can
carry what no generated client would send: invalid UTF-8 in a string field,
bytes that are not a message at all, a Struct nested far beyond any real
payload, and a unary call that never sends its request.
"""

from __future__ import annotations

import base64
import resource
from collections.abc import AsyncIterator

import pytest
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError

from daveloper.app import App
from daveloper.edge.bridge import RawCodec
from daveloper.rpc.encoded import varint
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

_LIST_DOCUMENTS = "/daveloper.v1.DocumentService/ListDocuments"
_CREATE_SESSION = "/daveloper.v1.SessionService/CreateSession"
_UPSERT_POINTS = "/daveloper.v1.VectorService/UpsertPoints"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A ``google.protobuf.Struct`` nested ``depth`` times: ``{"a": {"a": ... {}}}``."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        entry = _field(1, b"a") + _field(2, value)  # map<string, Value> entry
        struct = _field(1, entry)  # Struct.fields
    return struct


def upsert_with_payload(struct: bytes) -> bytes:
    point = _field(1, b"1") + _field(4, struct)  # Point.id, Point.payload
    return _field(1, b"c") + _field(2, point)  # UpsertPointsRequest.collection, .points


@pytest.fixture
async def raw(app: App) -> AsyncIterator[Channel]:
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port, codec=RawCodec(),
                      status_details_codec=ProtoStatusDetailsCodec())
    try:
        yield channel
    finally:
        channel.close()


async def call_raw(channel: Channel, path: str, message: bytes | None, metadata: dict[str, str]) -> bytes:
    # With no message, the client side calls itself client-streaming: grpclib's unary client refuses to send none.
    cardinality = Cardinality.UNARY_UNARY if message is not None else Cardinality.STREAM_UNARY
    async with channel.request(path, cardinality, bytes, bytes, timeout=20, metadata=metadata) as stream:
        await stream.send_request()
        if message is None:
            await stream.end()
        else:
            await stream.send_message(message, end=True)
        response = await stream.recv_message()
        await stream.recv_trailing_metadata()
        return response or b""


async def _refused(channel: Channel, path: str, message: bytes | None, metadata: dict[str, str]) -> GRPCError:
    with pytest.raises(GRPCError) as caught:
        await call_raw(channel, path, message, metadata)
    error = caught.value
    assert error.status is Status.INVALID_ARGUMENT, (path, error.status, error.message)
    assert any(isinstance(d, error_details_pb2.BadRequest) for d in error.details or ()), error.details
    return error


async def test_invalid_utf8_in_a_string_field_is_invalid_argument(raw: Channel, token: str) -> None:
    await _refused(raw, _LIST_DOCUMENTS, _field(2, b"o\xff\xfe"), bearer(token))


async def test_bytes_that_are_not_the_message_are_refused_not_read_as_empty(raw: Channel, token: str) -> None:
    await _refused(raw, _LIST_DOCUMENTS, bytes.fromhex("ffffffff0f12"), bearer(token))
    await _refused(raw, _CREATE_SESSION, bytes.fromhex("ffffffff0f12"), {})
    await _refused(raw, _HEALTH_CHECK, bytes.fromhex("ffffffff0f12"), {})


async def test_a_page_token_with_a_huge_offset_is_invalid_argument(raw: Channel, token: str) -> None:
    page_token = base64.urlsafe_b64encode(b"o:" + b"9" * 40).decode().rstrip("=")
    await _refused(raw, _LIST_DOCUMENTS, _field(2, page_token.encode()), bearer(token))


async def test_a_unary_call_with_no_request_message_is_invalid_argument(raw: Channel, token: str) -> None:
    await _refused(raw, _LIST_DOCUMENTS, None, bearer(token))
    await _refused(raw, _CREATE_SESSION, None, {})
    await _refused(raw, _HEALTH_CHECK, None, {})


async def test_a_struct_nested_beyond_the_limit_is_refused_within_bounded_memory(raw: Channel, token: str) -> None:
    # 200 levels was a RecursionError; the large one cost +500 MiB of transient memory.
    for depth in (200, 30_000):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        error = await _refused(raw, _UPSERT_POINTS, upsert_with_payload(nested_struct(depth)), bearer(token))
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert "nest" in (error.message or ""), error.message
        assert grown_mib < 100, f"depth {depth}: peak resident memory grew {grown_mib:.0f} MiB"


async def test_a_shallow_struct_is_still_accepted(raw: Channel, token: str) -> None:
    # The depth limit refuses abuse only: a payload nested a few levels passes the decoder
    # (the call then fails for its own reason: the collection does not exist).
    with pytest.raises(GRPCError) as caught:
        await call_raw(raw, _UPSERT_POINTS, upsert_with_payload(nested_struct(5)), bearer(token))
    assert caught.value.status is Status.NOT_FOUND, caught.value


async def test_the_server_keeps_serving_well_formed_calls(raw: Channel, token: str) -> None:
    await _refused(raw, _LIST_DOCUMENTS, bytes.fromhex("ffffffff0f12"), bearer(token))
    assert await call_raw(raw, _LIST_DOCUMENTS, b"", bearer(token)) == b""
