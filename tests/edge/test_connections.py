"""The edge's listener bounds: a deadline for a request's headers, a cap on connections per address."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from daveloper.app import App
from daveloper.config import Settings
from daveloper.edge import Edge
from tests.edge.test_protocol import custom_edge

pytestmark = pytest.mark.timeout(60)

_HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: "
_FULL_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"


async def _open(edge: Edge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(edge.addr.host, edge.addr.port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading until EOF)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_half_sent_requests_are_closed_after_the_header_timeout(
        edge_settings: Settings, app: App) -> None:
    # 200 half-sent requests were all still held 20 s later.
    async with (custom_edge(edge_settings, app, header_timeout_seconds=0.5) as edge,
                aiohttp.ClientSession() as http):
        slow = [await _open(edge) for _ in range(60)]
        for _, writer in slow:
            writer.write(_HALF_REQUEST)
        async with http.get(f"{edge.url}/healthz") as meanwhile:  # the edge serves everyone else
            assert meanwhile.status == 200
        closed = await asyncio.gather(*(_closed_within(reader, 3.0) for reader, _ in slow))
        assert all(closed), closed.count(False)
        assert edge.connections is not None
        assert edge.connections.refused["slow_opening"] == 60
        assert edge.connections.open_from("127.0.0.1") == 1  # the client session's kept-alive one
        for _, writer in slow:
            writer.close()


async def test_an_idle_keep_alive_connection_is_not_an_unfinished_request(
        edge_settings: Settings, app: App) -> None:
    async with custom_edge(edge_settings, app, header_timeout_seconds=0.3) as edge:
        reader, writer = await _open(edge)
        for _ in range(2):  # the second request comes after more than the header timeout
            writer.write(_FULL_REQUEST)
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            while (await reader.readline()) != b"\r\n":
                pass
            await reader.readexactly(len(b'{"status": "serving"}'))
            await asyncio.sleep(0.6)
        writer.close()
        assert edge.connections is not None
        assert not edge.connections.refused


async def test_connections_per_client_address_are_bounded(edge_settings: Settings, app: App) -> None:
    async with (custom_edge(edge_settings, app, max_connections_per_address=5) as edge,
                aiohttp.ClientSession() as http):
        held = [await _open(edge) for _ in range(8)]
        await asyncio.sleep(0.1)
        closed = await asyncio.gather(*(_closed_within(reader, 0.5) for reader, _ in held))
        assert closed.count(True) == 3, closed
        assert edge.connections is not None
        assert edge.connections.refused["per_address"] == 3
        for _, writer in held:
            writer.close()
        for _ in range(50):  # the held ones' slots come back
            if edge.connections.open_from("127.0.0.1") == 0:
                break
            await asyncio.sleep(0.02)
        async with http.get(f"{edge.url}/healthz") as response:
            assert response.status == 200


async def test_a_trusted_proxy_has_no_per_address_cap(edge_settings: Settings, app: App) -> None:
    # Behind a reverse proxy every client arrives from the proxy's one address.
    async with custom_edge(edge_settings, app, max_connections_per_address=5,
                           trusted_proxies=("127.0.0.0/8",)) as edge:
        held = [await _open(edge) for _ in range(8)]
        closed = await asyncio.gather(*(_closed_within(reader, 0.3) for reader, _ in held))
        assert not any(closed), closed
        assert edge.connections is not None
        assert not edge.connections.refused
        for _, writer in held:
            writer.close()
