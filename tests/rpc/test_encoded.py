"""Pre-encoded messages: wire helpers, and the pass-through codec over real gRPC calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from daveloper.errors import InvalidArgument
from daveloper.rpc import Call, Interceptor, Principal, Servicer
from daveloper.rpc.encoded import Encoded, PassThroughCodec, length_delimited_fields, varint, wrap_event
from generated.daveloper.v1 import (
    AgentServiceBase,
    AgentServiceStub,
    ChatEvent,
    IngestEvent,
    IngestProgress,
    JobEvent,
    JobFinished,
    TokenDelta,
    TurnCompleted,
    TurnFailed,
    WatchIngestionResponse,
    WatchJobResponse,
    WatchRequest,
    WatchResponse,
)

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**32, 2**63 - 1])
def test_varint_matches_the_protobuf_encoding(value: int) -> None:
    # uint64 field 1 of a message is tag 0x08 + the varint of its value
    assert b"\x08" + varint(value) == bytes(ChatEvent(seq=value)) or value == 0


@pytest.mark.parametrize("seq", [1, 127, 128, 70_000, 2**40])
@pytest.mark.parametrize("text", ["", "hi", "x" * 200, "é" * 5_000])
def test_a_wrapped_stored_event_is_exactly_the_encoded_response(seq: int, text: str) -> None:
    stored = ChatEvent(conversation_id="conv_1", turn_id="turn_1", token_delta=TokenDelta(text=text))
    wrapped = wrap_event(bytes(stored), seq)

    expected = ChatEvent(conversation_id="conv_1", turn_id="turn_1", token_delta=TokenDelta(text=text), seq=seq)
    assert WatchResponse.parse(wrapped) == WatchResponse(event=expected)
    assert wrapped == bytes(WatchResponse(event=expected))  # field order too: byte for byte


def test_every_stored_event_kind_wraps_into_its_response() -> None:
    ingest = IngestEvent(ingestion_id="ing_1", progress=IngestProgress(done=3, total=9))
    job = JobEvent(job_id="job_1", finished=JobFinished())
    assert WatchIngestionResponse.parse(wrap_event(bytes(ingest), 4)).event.seq == 4
    assert WatchIngestionResponse.parse(wrap_event(bytes(ingest), 4)).event.progress == ingest.progress
    parsed = WatchJobResponse.parse(wrap_event(bytes(job), 2**33))
    assert (parsed.event.seq, parsed.event.job_id, parsed.event.finished) == (2**33, "job_1", JobFinished())


def test_length_delimited_fields_reads_turn_id_and_kind_without_decoding() -> None:
    done = bytes(ChatEvent(conversation_id="c", turn_id="turn_9", turn_completed=TurnCompleted()))
    fields = length_delimited_fields(done)
    assert fields[3] == b"turn_9"
    assert 15 in fields  # an empty oneof member is on the wire
    assert 16 not in fields
    failed = length_delimited_fields(bytes(ChatEvent(seq=5, turn_id="t", turn_failed=TurnFailed(partial_text="p"))))
    assert failed[3] == b"t"
    assert 16 in failed
    assert length_delimited_fields(b"") == {}
    with pytest.raises(ValueError, match="truncated length-delimited"):
        length_delimited_fields(done[:-1] + b"\x05")  # a length past the end
    with pytest.raises(ValueError, match="truncated varint"):
        length_delimited_fields(b"\x08")  # a varint cut short


class Watcher(Servicer):
    base = AgentServiceBase

    async def Watch(self, request: WatchRequest, call: Call[Any, Any]) -> AsyncIterator[Any]:
        if not request.conversation_id:
            raise InvalidArgument.field("conversation_id", "must not be empty")
        stored = ChatEvent(conversation_id=request.conversation_id, token_delta=TokenDelta(text="from the log"))
        yield wrap_event(bytes(stored), 1)  # as stored, no re-encoding
        yield WatchResponse(event=ChatEvent(seq=2, conversation_id=request.conversation_id))  # built here
        yield Encoded(bytes(WatchResponse(event=ChatEvent(seq=3))))


class AnyCaller:
    async def authenticate(self, metadata: Any) -> Principal:
        return Principal(session_id="s1")


@pytest.fixture
async def channel() -> AsyncIterator[Channel]:
    server = Server([Watcher(auth=AnyCaller())], codec=PassThroughCodec(),
                    status_details_codec=ProtoStatusDetailsCodec())
    Interceptor(max_message_bytes=64 * 1024).install(server)
    await server.start("127.0.0.1", 0)
    channel = Channel("127.0.0.1", server._server.sockets[0].getsockname()[1])
    try:
        yield channel
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_pre_encoded_and_ordinary_messages_share_one_stream(channel: Channel) -> None:
    stub = AgentServiceStub(channel)
    received = [r async for r in stub.watch(WatchRequest(conversation_id="conv_1"), timeout=5)]
    assert [r.event.seq for r in received] == [1, 2, 3]
    assert received[0].event == ChatEvent(seq=1, conversation_id="conv_1", token_delta=TokenDelta(text="from the log"))
    assert received[1].event.conversation_id == "conv_1"


async def test_error_details_still_reach_the_client(channel: Channel) -> None:
    stub = AgentServiceStub(channel)
    with pytest.raises(GRPCError) as caught:
        async for _ in stub.watch(WatchRequest(), timeout=5):
            pass
    assert caught.value.status is Status.INVALID_ARGUMENT
    bad = next(d for d in caught.value.details or [] if isinstance(d, error_details_pb2.BadRequest))
    assert bad.field_violations[0].field == "conversation_id"
