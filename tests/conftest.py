"""Shared fixtures: a real Valkey server for the whole run, a clean database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported early: pytest's plugin otherwise imports it at exit, see below)
import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel

from daveloper.app import App, open_app
from daveloper.config import Address, Settings
from daveloper.infra.valkey import EmbeddedValkey
from generated.daveloper.v1 import CreateSessionRequest, SessionServiceStub


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis/Valkey: ``DAVELOPER_TEST_REDIS_URL`` if set, else one we start."""
    if url := os.environ.get("DAVELOPER_TEST_REDIS_URL"):
        yield url
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start_sync()
    try:
        yield server.url
    finally:
        server.stop_sync()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a flushed database."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(redis_url: str, data_dir: Path) -> Settings:
    """Settings for an in-process app on a free port, using the shared test Valkey."""
    return Settings(
        grpc_addr=Address("127.0.0.1", 0),
        edge_addr=Address("127.0.0.1", 0),
        data_dir=data_dir,
        redis_url=redis_url,
        drain_seconds=1.0,
        instance_id="test",
    )


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[App]:
    async with open_app(settings) as running:
        yield running


@pytest.fixture
async def channel(app: App) -> AsyncIterator[Channel]:
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        yield channel
    finally:
        channel.close()


@pytest.fixture
async def token(channel: Channel) -> str:
    """A fresh session's bearer token."""
    response = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
    return response.token
