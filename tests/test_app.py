"""The composed app: bad calls fail alone, without disturbing other streams on the connection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from daveloper.app import App
from daveloper.config import Settings
from generated.daveloper.v1 import (
    CreateSessionRequest,
    GetSessionRequest,
    SessionServiceStub,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(max_message_bytes=1024)


def grpcio_status(app: App, path: str) -> tuple[Any, str]:
    """Call ``path`` with grpcio (gRPC's C core).

    grpclib answers an unknown method with a trailers-only response that has no
    content-type; grpclib's own client then reports UNKNOWN, while the C core
    (and grpc-go, i.e. grpcurl) read the UNIMPLEMENTED status, so check with it.
    """
    with grpc.insecure_channel(f"{app.grpc_addr.host}:{app.grpc_addr.port}") as channel:
        method = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
        try:
            method(b"", timeout=5)
        except grpc.RpcError as error:
            return error.code(), error.details()
    raise AssertionError("call succeeded")


async def test_failing_calls_leave_an_open_stream_and_the_connection_working(app: App, channel: Channel) -> None:
    async with HealthStub(channel).Watch.open(timeout=20) as watch:
        await watch.send_message(HealthCheckRequest(service=""), end=True)
        assert (await watch.recv_message()).status == HealthCheckResponse.SERVING

        with pytest.raises(GRPCError) as no_token:
            await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5)
        assert no_token.value.status is Status.UNAUTHENTICATED

        for path in ("/daveloper.v1.SessionService/Nope", "/daveloper.v1.NoSuchService/Call"):
            assert await asyncio.to_thread(grpcio_status, app, path) == (grpc.StatusCode.UNIMPLEMENTED,
                                                                         "Method not found")

        with pytest.raises(GRPCError) as too_big:
            await SessionServiceStub(channel).create_session(
                CreateSessionRequest(labels={"k": "v" * 2000}), timeout=5
            )
        assert too_big.value.status is Status.RESOURCE_EXHAUSTED

        # The connection still serves calls, and the open stream still gets pushes.
        created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
        assert created.token
        app.health.set_draining()
        assert (await watch.recv_message()).status == HealthCheckResponse.NOT_SERVING
        await watch.cancel()
