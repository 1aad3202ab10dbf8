"""LogsService.Tail: live records from every instance through Redis, scoped to the caller's session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from h2.exceptions import StreamClosedError

from daveloper.app import App
from daveloper.config import Settings
from generated.daveloper.v1 import (
    CreateSessionRequest,
    DocumentServiceStub,
    GetDocumentRequest,
    LogLevel,
    LogRecord,
    SessionServiceStub,
    TailRequest,
    TailResponse,
)
from tests.grpc_helpers import bearer
from tests.test_cli import free_port

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-for-log-tests"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(admin_token=ADMIN)


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="daveloper")


class Tail:
    """A Tail call read in the background; ``records`` fills as they arrive."""

    def __init__(self, channel: Channel, token: str, request: TailRequest) -> None:
        self.records: list[LogRecord] = []
        self._channel, self._token, self._request = channel, token, request
        self._ready = asyncio.Event()

    async def run(self) -> None:
        async with self._channel.request("/daveloper.v1.LogsService/Tail", Cardinality.UNARY_STREAM, TailRequest,
                                         TailResponse, timeout=30, metadata=bearer(self._token)) as stream:
            await stream.send_message(self._request, end=True)
            self._ready.set()
            try:
                async for response in stream:
                    self.records.append(response.record)
            finally:
                # Else leaving the block can wait forever for the server's end (unless it ended already).
                with contextlib.suppress(StreamClosedError):
                    await stream.cancel()

    async def started(self) -> None:
        await self._ready.wait()
        await asyncio.sleep(0.3)  # the server subscribes to the channel after the call starts

    async def until(self, found: object, within: float = 10) -> list[LogRecord]:
        async with asyncio.timeout(within):
            while not any(found(r) for r in self.records):  # type: ignore[operator]  # noqa: ASYNC110 (polls)
                await asyncio.sleep(0.05)
        return self.records


@pytest.fixture
async def tails(channel: Channel) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def start(tails: list[asyncio.Task[None]], channel: Channel, token: str, **request: object) -> Tail:
    tail = Tail(channel, token, TailRequest(**request))  # type: ignore[arg-type]
    tails.append(asyncio.create_task(tail.run()))
    return tail


async def new_token(channel: Channel) -> str:
    return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token


async def provoke(channel: Channel, token: str, document_id: str) -> None:
    """A failing call: the server logs it with the caller's session and request id."""
    with pytest.raises(GRPCError):
        await DocumentServiceStub(channel).get_document(GetDocumentRequest(document_id=document_id), timeout=5,
                                                        metadata={**bearer(token), "x-request-id": document_id})


async def test_a_session_sees_its_own_records_and_the_admin_sees_all(
    channel: Channel, tails: list[asyncio.Task[None]]
) -> None:
    a, b = await new_token(channel), await new_token(channel)
    mine, theirs = start(tails, channel, a), start(tails, channel, b)
    everyone = start(tails, channel, ADMIN)
    warnings_only = start(tails, channel, a, min_level=LogLevel.WARNING)
    for tail in (mine, theirs, everyone, warnings_only):
        await tail.started()

    await provoke(channel, a, "doc_of_a")
    await provoke(channel, b, "doc_of_b")
    await mine.until(lambda r: r.request_id == "doc_of_a")
    await theirs.until(lambda r: r.request_id == "doc_of_b")
    await everyone.until(lambda r: r.request_id == "doc_of_b")
    await everyone.until(lambda r: r.request_id == "doc_of_a")
    record = next(r for r in mine.records if r.request_id == "doc_of_a")
    assert record.logger == "daveloper.rpc"
    assert record.fields["status"] == "NOT_FOUND"
    assert record.instance == "test"
    assert all(r.request_id != "doc_of_b" for r in mine.records)  # never another session's records
    assert all(r.request_id != "doc_of_a" for r in theirs.records)
    assert all(r.level >= LogLevel.WARNING for r in warnings_only.records)


async def test_tail_needs_a_session(channel: Channel) -> None:
    tail = Tail(channel, "", TailRequest())
    with pytest.raises(GRPCError) as error:
        await tail.run()
    assert error.value.status == Status.UNAUTHENTICATED


async def test_records_from_another_process_arrive(
    app: App, channel: Channel, redis_url: str, tmp_path: Path, tails: list[asyncio.Task[None]]
) -> None:
    everyone = start(tails, channel, ADMIN)
    await everyone.started()
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    env.update(DAVELOPER_REDIS_URL=redis_url, DAVELOPER_INSTANCE_ID="other-process", DAVELOPER_ADMIN_TOKEN=ADMIN,
               DAVELOPER_EDGE_ADDR=f"127.0.0.1:{free_port()}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daveloper", "serve", "--grpc-addr", addr, "--data-dir", str(tmp_path / "other"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert process.stdout is not None
        assert b"gRPC listening" in await process.stdout.readline()
        host, port = addr.split(":")
        other = Channel(host, int(port))
        try:
            await provoke(other, await new_token(other), "from_the_other_process")
        finally:
            other.close()
        records = await everyone.until(lambda r: r.request_id == "from_the_other_process")
        assert next(r for r in records if r.request_id == "from_the_other_process").instance == "other-process"
    finally:
        process.terminate()
        async with asyncio.timeout(15):
            await process.wait()
