"""Edge fixtures: a real edge in front of the real in-process app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from daveloper.app import App
from daveloper.config import Address, Settings
from daveloper.edge import Edge, open_edge


@pytest.fixture
def edge_settings(settings: Settings) -> Settings:
    return settings.replace(edge_addr=Address("127.0.0.1", 0))


@pytest.fixture(params=["local", "http2"])
async def edge(request: pytest.FixtureRequest, edge_settings: Settings, app: App) -> AsyncIterator[Edge]:
    """An edge calling the app in process (as ``daveloper serve`` does) or over HTTP/2 (a separate gateway)."""
    local = (app.grpc_addr, app.server) if request.param == "local" else None
    async with open_edge(edge_settings, upstreams=[app.grpc_addr], health=app.health, local=local) as running:
        assert [b.local for b in running.state.upstream.backends] == [local is not None]
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
