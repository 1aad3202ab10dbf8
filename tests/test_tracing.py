"""Traces of a chat turn across the edge and the servicer, with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from daveloper import tracing
from daveloper.app import App
from daveloper.config import Settings
from daveloper.errors import ConfigError
from generated.daveloper.v1 import CreateSessionRequest, GetSessionRequest, SessionServiceStub
from tests.edge.client import connect
from tests.grpc_helpers import bearer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
CHAT = "/daveloper.v1.AgentService/Chat"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_provider(provider)
    try:
        yield memory
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def finished(exporter: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, ...]:
    async with asyncio.timeout(10):
        while not by_name(exporter.get_finished_spans(), name):  # noqa: ASYNC110 - polling the exporter
            await asyncio.sleep(0.02)
    return exporter.get_finished_spans()


async def test_a_chat_turn_is_one_trace_from_the_edge_to_redis(
    app: App, token: str, exporter: InMemorySpanExporter
) -> None:
    async with aiohttp.ClientSession() as http:
        client = await connect(http, app.edge, token=token)
        await client.send({"type": "open", "id": 1, "method": CHAT, "credit": 1000,
                           "metadata": {"traceparent": TRACEPARENT},
                           "message": {"send": {"conversationId": "t1", "text": "What is Redis for?"}}})
        while True:
            frame = await client.recv()
            if frame["type"] == "msg" and "turnCompleted" in frame["message"]["event"]:
                break
        spans = await finished(exporter, "chat.turn")
        await client.ws.close()
    await finished(exporter, "edge daveloper.v1.AgentService/Chat")
    # The server's span ends when its handler has seen the cancel, which may be after the edge's.
    spans = await finished(exporter, "daveloper.v1.AgentService/Chat")

    (edge,) = by_name(spans, "edge daveloper.v1.AgentService/Chat")
    (server,) = by_name(spans, "daveloper.v1.AgentService/Chat")
    (turn,) = by_name(spans, "chat.turn")
    assert edge.kind is SpanKind.SERVER
    assert server.kind is SpanKind.SERVER
    # One trace, continuing the browser's: browser → edge → gRPC server → the turn in the background.
    for span in (edge, server, turn):
        assert span.context is not None
        assert hex_id(span.context.trace_id, 32) == TRACE_ID
    assert edge.parent is not None
    assert hex_id(edge.parent.span_id, 16) == CLIENT_SPAN
    assert server.parent is not None
    assert edge.context is not None
    assert server.parent.span_id == edge.context.span_id
    assert turn.parent is not None
    assert server.context is not None
    assert turn.parent.span_id == server.context.span_id
    # Inside the turn: the model rounds and the tool call, and Redis and Qdrant calls below them.
    assert turn.context is not None
    rounds = [s for s in by_name(spans, "llm.stream") if s.parent and s.parent.span_id == turn.context.span_id]
    assert len(rounds) == 2  # ask, call search_documents, answer
    (tool,) = by_name(spans, "tool.search_documents")
    assert tool.parent is not None
    assert tool.parent.span_id == turn.context.span_id
    below_turn = [s for s in spans if s.name.startswith(("redis ", "qdrant ")) and s.parent
                  and s.parent.span_id in (turn.context.span_id, tool.context.span_id if tool.context else 0)]
    assert any(s.name.startswith("redis ") for s in below_turn)
    assert any(s.name == "qdrant query_points" for s in spans)
    assert server.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"


async def test_native_grpc_callers_continue_their_trace_and_errors_are_marked(
    app: App, channel: Channel, exporter: InMemorySpanExporter
) -> None:
    sessions = SessionServiceStub(channel)
    await sessions.create_session(CreateSessionRequest(), metadata={"traceparent": TRACEPARENT})
    with pytest.raises(GRPCError, match="token"):
        await sessions.get_session(GetSessionRequest(), metadata={**bearer("not-a-token"),
                                                                  "traceparent": TRACEPARENT})
    spans = await finished(exporter, "daveloper.v1.SessionService/GetSession")
    (created,) = by_name(spans, "daveloper.v1.SessionService/CreateSession")
    (refused,) = by_name(spans, "daveloper.v1.SessionService/GetSession")
    for span in (created, refused):
        assert span.context is not None
        assert hex_id(span.context.trace_id, 32) == TRACE_ID
    # A refused token is the caller's error, not the server's (OpenTelemetry's RPC conventions).
    assert created.status.status_code is StatusCode.UNSET
    assert refused.status.status_code is StatusCode.UNSET
    assert refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == 16  # UNAUTHENTICATED
    assert not [s for s in spans if s.name.startswith("grpc.health")]  # probes make no traces


async def test_no_spans_and_no_propagation_work_when_tracing_is_off(app: App, channel: Channel) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_provider(provider)
    tracing.use_provider(None)  # configured, then switched off
    await SessionServiceStub(channel).create_session(CreateSessionRequest(), metadata={"traceparent": TRACEPARENT})
    assert memory.get_finished_spans() == ()
    assert not tracing.enabled()
    with tracing.server_span("x", {"traceparent": TRACEPARENT}) as span:
        assert span is None
    metadata: list[tuple[str, str | bytes]] = [("traceparent", TRACEPARENT)]
    tracing.inject(metadata)
    assert metadata == [("traceparent", TRACEPARENT)]  # passed on untouched


def test_enabling_tracing_without_a_provider_package_is_a_clear_error(settings: Settings,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.configure_tracing(settings) is None
    stop = tracing.configure_tracing(settings.replace(otel_enabled=True))
    assert stop is not None
    assert tracing.enabled()
    stop()
    assert not tracing.enabled()
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"daveloper\[tracing\]"):
        tracing.configure_tracing(settings.replace(otel_enabled=True))


def test_server_faults_mark_a_span_failed(exporter: InMemorySpanExporter) -> None:
    for name, code in (("UNAVAILABLE", 14), ("NOT_FOUND", 5), ("OK", 0)):
        with tracing.server_span(name, {}) as current:
            tracing.set_status(current, name, code)
    statuses = {s.name: s.status.status_code for s in exporter.get_finished_spans()}
    assert statuses == {"UNAVAILABLE": StatusCode.ERROR, "NOT_FOUND": StatusCode.UNSET, "OK": StatusCode.UNSET}
