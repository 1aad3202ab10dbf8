"""The framework layer over grpclib, through real gRPC calls on a loopback socket.

Small servicers defined here implement real daveloper.v1 RPCs so every handler
shape and every cross-cutting concern is exercised end to end.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from daveloper.errors import InvalidArgument, Unauthenticated
from daveloper.jsonlog import configure_logging
from daveloper.rpc import Call, Interceptor, Principal, Servicer, public
from generated.daveloper.v1 import (
    AgentServiceBase,
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    DeleteCollectionRequest,
    ListCollectionsRequest,
    ListCollectionsResponse,
    LogRecord,
    LogsServiceBase,
    LogsServiceStub,
    Point,
    SendMessage,
    TailRequest,
    TailResponse,
    TokenDelta,
    UpsertPointsRequest,
    VectorServiceBase,
    VectorServiceStub,
)

pytestmark = pytest.mark.timeout(20)


class StaticAuth:
    """Accepts exactly one token; the real SessionStore is tested in tests/servicers."""

    async def authenticate(self, metadata: Any) -> Principal:
        if metadata.get("authorization") != "Bearer good":
            raise Unauthenticated("bad token", reason="TOKEN_INVALID")
        return Principal(session_id="s1")


class Vectors(Servicer):
    base = VectorServiceBase
    seen: list[dict[str, Any]] = []

    @public
    async def ListCollections(self, request: ListCollectionsRequest, call: Call[Any, Any]) -> ListCollectionsResponse:
        call.trailers["x-answer"] = "42"
        self.seen.append({"peer": call.peer, "remaining": call.time_remaining(),
                          "request_id": call.request_id, "method": call.method,
                          "meta": call.metadata.get("x-custom")})
        return ListCollectionsResponse()

    async def UpsertPoints(self, request: UpsertPointsRequest, call: Call[Any, Any]) -> Any:
        if not request.collection:
            raise InvalidArgument.field("collection", "must not be empty")
        raise ValueError("secret internals must not leak")


class Logs(Servicer):
    base = LogsServiceBase

    async def Tail(self, request: TailRequest, call: Call[Any, Any]) -> AsyncIterator[TailResponse]:
        for i in range(3):
            yield TailResponse(record=LogRecord(message=f"line {i}", session_id=call.session_id))
        if request.job_id == "forever":
            await asyncio.Event().wait()


class Agent(Servicer):
    base = AgentServiceBase

    async def Chat(self, call: Call[ChatRequest, ChatResponse]) -> None:
        # Write concurrently with reading: a tick stream runs while requests arrive.
        async def ticks() -> None:
            for i in range(3):
                await call.send(ChatResponse(event=ChatEvent(seq=i + 1, turn_id="tick")))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(ticks())
            seq = 100
            async for request in call:
                assert request.send is not None
                seq += 1
                await call.send(ChatResponse(event=ChatEvent(seq=seq, token_delta=TokenDelta(text=request.send.text))))


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, Interceptor, Channel]]:
    auth = StaticAuth()
    server = Server([Vectors(auth=auth), Logs(auth=auth), Agent(auth=auth)])
    interceptor = Interceptor(max_message_bytes=64 * 1024)
    interceptor.install(server)
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port)
    try:
        yield server, interceptor, channel
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


GOOD = {"authorization": "Bearer good"}


def error_info(error: GRPCError) -> error_details_pb2.ErrorInfo:
    infos = [d for d in error.details or [] if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, error.details
    return infos[0]


async def test_unary_sees_metadata_deadline_peer_and_sends_trailers(server: Any) -> None:
    _, _, channel = server
    Vectors.seen.clear()
    stub = VectorServiceStub(channel)
    async with stub.channel.request(
        "/daveloper.v1.VectorService/ListCollections", Cardinality.UNARY_UNARY,
        ListCollectionsRequest, ListCollectionsResponse, timeout=5,
        metadata={"x-custom": "hello", "x-request-id": "req-123"},
    ) as stream:
        await stream.send_message(ListCollectionsRequest(), end=True)
        await stream.recv_message()
        await stream.recv_trailing_metadata()
        assert stream.trailing_metadata["x-answer"] == "42"
        assert stream.trailing_metadata["x-request-id"] == "req-123"
    seen = Vectors.seen[0]
    assert seen["meta"] == "hello"
    assert seen["request_id"] == "req-123"
    assert seen["method"] == "/daveloper.v1.VectorService/ListCollections"
    assert seen["peer"].startswith("127.0.0.1:")
    assert 0 < seen["remaining"] <= 5


async def test_request_id_is_generated_when_absent(server: Any) -> None:
    _, _, channel = server
    Vectors.seen.clear()
    await VectorServiceStub(channel).list_collections(ListCollectionsRequest(), timeout=5)
    assert len(Vectors.seen[0]["request_id"]) == 32


async def test_missing_token_is_unauthenticated_with_error_info(server: Any) -> None:
    _, _, channel = server
    with pytest.raises(GRPCError) as caught:
        await VectorServiceStub(channel).upsert_points(UpsertPointsRequest(collection="c"), timeout=5)
    assert caught.value.status is Status.UNAUTHENTICATED
    info = error_info(caught.value)
    assert (info.reason, info.domain) == ("TOKEN_INVALID", "daveloper")


async def test_invalid_argument_carries_field_violations(server: Any) -> None:
    _, _, channel = server
    with pytest.raises(GRPCError) as caught:
        await VectorServiceStub(channel).upsert_points(UpsertPointsRequest(), timeout=5, metadata=GOOD)
    assert caught.value.status is Status.INVALID_ARGUMENT
    bad = next(d for d in caught.value.details if isinstance(d, error_details_pb2.BadRequest))
    assert [(v.field, v.description) for v in bad.field_violations] == [("collection", "must not be empty")]


async def test_unexpected_exception_is_internal_without_leaking(server: Any) -> None:
    _, _, channel = server
    with pytest.raises(GRPCError) as caught:
        await VectorServiceStub(channel).upsert_points(UpsertPointsRequest(collection="c"), timeout=5, metadata=GOOD)
    assert caught.value.status is Status.INTERNAL
    assert "secret" not in (caught.value.message or "")
    assert "request id" in (caught.value.message or "")
    assert "Traceback" not in str(caught.value.details)


async def test_unimplemented_method_answers_unimplemented(server: Any) -> None:
    _, _, channel = server
    with pytest.raises(GRPCError) as caught:
        await VectorServiceStub(channel).delete_collection(DeleteCollectionRequest(name="x"), timeout=5, metadata=GOOD)
    assert caught.value.status is Status.UNIMPLEMENTED


async def test_server_stream_yields_then_ends_ok(server: Any) -> None:
    _, _, channel = server
    got = [r.record async for r in LogsServiceStub(channel).tail(TailRequest(), timeout=5, metadata=GOOD)]
    assert [(r.message, r.session_id) for r in got] == [("line 0", "s1"), ("line 1", "s1"), ("line 2", "s1")]


async def test_bidi_reads_and_writes_concurrently(server: Any) -> None:
    _, _, channel = server
    stub = AgentServiceStub(channel)
    async with stub.channel.request(
        "/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM,
        ChatRequest, ChatResponse, timeout=5, metadata=GOOD,
    ) as stream:
        await stream.send_message(ChatRequest(send=SendMessage(text="a")))
        # Ticks arrive although the client has not half-closed and sent only one message.
        seqs = [(await stream.recv_message()).event.seq for _ in range(4)]
        assert sorted(seqs) == [1, 2, 3, 101]
        await stream.send_message(ChatRequest(send=SendMessage(text="b")), end=True)
        last = await stream.recv_message()
        assert (last.event.seq, last.event.token_delta.text) == (102, "b")
        assert await stream.recv_message() is None


async def test_oversized_message_is_refused_and_other_streams_continue(server: Any) -> None:
    _, _, channel = server
    tail = LogsServiceStub(channel).tail(TailRequest(job_id="forever"), timeout=10, metadata=GOOD)
    first = await anext(tail)
    assert first.record.message == "line 0"

    huge = UpsertPointsRequest(collection="c", points=[Point(id=str(i), dense=[0.5] * 1000) for i in range(40)])
    with pytest.raises(GRPCError) as caught:
        await VectorServiceStub(channel).upsert_points(huge, timeout=5, metadata=GOOD)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "MESSAGE_TOO_LARGE"
    assert info.metadata["limit_bytes"] == str(64 * 1024)

    # The open stream on the same connection is undisturbed, and the connection still serves calls.
    assert (await anext(tail)).record.message == "line 1"
    await VectorServiceStub(channel).list_collections(ListCollectionsRequest(), timeout=5)
    await tail.aclose()


async def test_drain_refuses_new_calls_and_ends_open_streams_with_unavailable(server: Any) -> None:
    _, interceptor, channel = server
    stream_cm = channel.request(
        "/daveloper.v1.LogsService/Tail", Cardinality.UNARY_STREAM,
        TailRequest, TailResponse, timeout=10, metadata=GOOD,
    )
    async with stream_cm as stream:
        await stream.send_message(TailRequest(job_id="forever"), end=True)
        for _ in range(3):
            await stream.recv_message()
        assert interceptor.inflight == 1
        drain = asyncio.create_task(interceptor.drain(0.3))
        await asyncio.sleep(0.05)
        with pytest.raises(GRPCError) as refused:
            await VectorServiceStub(channel).list_collections(ListCollectionsRequest(), timeout=5)
        assert refused.value.status is Status.UNAVAILABLE
        assert await stream.recv_message() is None
        with pytest.raises(GRPCError) as ended:
            await stream.recv_trailing_metadata()
        assert ended.value.status is Status.UNAVAILABLE
        assert error_info(ended.value).reason == "DRAINING"
        await drain
    assert interceptor.inflight == 0


async def test_log_lines_written_during_a_call_carry_its_request_and_session(server: Any) -> None:
    _, _, channel = server
    out = io.StringIO()
    configure_logging("INFO", "inst", out)
    try:
        with pytest.raises(GRPCError):
            await VectorServiceStub(channel).upsert_points(
                UpsertPointsRequest(), timeout=5, metadata={**GOOD, "x-request-id": "trace-77"}
            )
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    error = next(line for line in lines if line["message"] == "rpc error")
    assert (error["request_id"], error["session_id"], error["status"]) == ("trace-77", "s1", "INVALID_ARGUMENT")
    assert error["method"] == "/daveloper.v1.VectorService/UpsertPoints"


async def test_calls_leave_no_reference_cycles_behind(server: Any) -> None:
    """Per-call objects must be freed by reference counting, not wait for the cycle collector."""
    _, _, channel = server
    stub = VectorServiceStub(channel)
    await stub.list_collections(ListCollectionsRequest(), timeout=5)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            await stub.list_collections(ListCollectionsRequest(), timeout=5)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 50, f"{unreachable} objects in cycles after 50 calls"
