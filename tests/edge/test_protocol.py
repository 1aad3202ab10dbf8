"""Protocol violations close only the offending socket, each with its documented answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from daveloper.app import App
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from tests.edge.client import JSON, PROTO, Client, connect, pack, status

pytestmark = pytest.mark.timeout(60)

CREATE = "/daveloper.v1.SessionService/CreateSession"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


async def still_works(http: aiohttp.ClientSession, edge: Edge) -> None:
    """Another socket on the same edge completes a call."""
    other = await connect(http, edge)
    assert status(await other.call(1, CREATE, {})) == {"code": "ok"}
    await other.ws.close()


@contextlib.asynccontextmanager
async def custom_edge(edge_settings: Settings, app: App, **changes: Any) -> AsyncIterator[Edge]:
    async with open_edge(edge_settings.replace(**changes), upstreams=[app.grpc_addr], health=app.health) as edge:
        yield edge


@pytest.mark.parametrize(("protocol", "raw", "code"), [
    (JSON, "{not json", 4400),
    (JSON, "[1, 2]", 4400),
    (JSON, json.dumps({"type": "bogus"}), 4400),
    (JSON, json.dumps({"type": "msg", "id": 0, "message": {}}), 4400),
    (JSON, json.dumps({"type": "open", "id": 1}), 4400),  # no method
    (JSON, json.dumps({"type": "open", "id": 1, "method": CREATE, "timeoutMs": "5"}), 4400),
    (JSON, json.dumps({"type": "welcome"}), 4400),  # a server-only frame
    (JSON, json.dumps({"type": "hello", "token": ""}), 4400),  # a second hello
    (JSON, json.dumps({"type": "msg", "id": 99, "message": {}}), 4404),  # never opened
    (JSON, b"\x04\x00\x00\x00\x00\x01", 4400),  # a binary frame on the JSON subprotocol
    (PROTO, "{}", 4400),  # a text frame on the binary subprotocol
    (PROTO, b"\x04\x00", 4400),  # shorter than the header
    (PROTO, b"\x63\x00\x00\x00\x00\x01", 4400),  # unknown type 99
    (PROTO, pack("open", 1)[:8], 4400),  # open cut inside its field length
])
async def test_violation_closes_with_its_code(edge: Edge, http: aiohttp.ClientSession, protocol: str,
                                              raw: str | bytes, code: int) -> None:
    client = await connect(http, edge, protocol=protocol)
    if isinstance(raw, str):
        await client.ws.send_str(raw)
    else:
        await client.ws.send_bytes(raw)
    closed_code, reason = await client.closed()
    assert closed_code == code, reason
    await still_works(http, edge)


async def test_stream_id_reuse_is_4409_and_open_streams_close_first(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    await client.send({"type": "open", "id": 5, "method": HEALTH_WATCH, "message": {}, "end": True})
    assert (await client.recv())["type"] == "headers"
    await client.send({"type": "open", "id": 5, "method": CREATE, "message": {}, "end": True})
    frames = await client.until_close(5)
    assert status(frames)["code"] == "canceled"  # the open stream still got its close
    assert await client.closed() == (4409, "stream id 5 is not above 5")
    await still_works(http, edge)


async def test_frames_for_a_finished_stream_are_ignored(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    await client.call(1, CREATE, {})
    await client.send({"type": "msg", "id": 1, "message": {}})
    await client.send({"type": "cancel", "id": 1})
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}


async def test_missing_handshake_is_4401(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, hello=False)
    await client.send({"type": "open", "id": 1, "method": CREATE, "message": {}, "end": True})
    assert (await client.closed())[0] == 4401
    await still_works(http, edge)


async def test_bad_token_is_4401(edge: Edge, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge, hello=False)
    await client.send({"type": "hello", "token": "not-a-token"})
    assert (await client.closed())[0] == 4401
    await still_works(http, edge)


async def test_handshake_and_idle_timeouts_are_4408(edge_settings: Settings, app: App,
                                                    http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, ws_idle_seconds=0.3) as edge:
        silent = await connect(http, edge, hello=False)
        assert (await silent.closed())[0] == 4408
        idle = await connect(http, edge)
        assert (await idle.closed())[0] == 4408
        busy = await connect(http, edge)  # an open stream keeps a quiet socket alive
        await busy.send({"type": "open", "id": 1, "method": HEALTH_WATCH, "message": {}, "end": True})
        async with contextlib.AsyncExitStack():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.8):
                    await busy.closed()


async def test_oversized_frame_is_1009(edge_settings: Settings, app: App, http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, ws_max_frame_bytes=1024) as edge:
        client = await connect(http, edge)
        await client.send({"type": "open", "id": 1, "method": CREATE, "message": {"labels": {"x": "y" * 2000}}})
        assert (await client.closed())[0] == 1009
        await still_works(http, edge)


async def test_too_many_streams_refuses_the_stream_not_the_socket(edge_settings: Settings, app: App,
                                                                  http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, ws_max_streams=2) as edge:
        client = await connect(http, edge)
        for stream_id in (1, 3):
            await client.send({"type": "open", "id": stream_id, "method": HEALTH_WATCH, "message": {}, "end": True})
        refused = await client.call(5, CREATE, {})
        assert status(refused)["code"] == "resource_exhausted"
        await client.send({"type": "cancel", "id": 1})
        await client.until_close(1)
        assert status(await client.call(7, CREATE, {})) == {"code": "ok"}


async def test_metadata_limit_is_a_stream_error(edge_settings: Settings, app: App,
                                                http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, ws_max_metadata_bytes=64) as edge:
        client = await connect(http, edge)
        frames = await client.call(1, CREATE, {}, metadata={"x-big": ["v" * 100]})
        assert status(frames)["code"] == "resource_exhausted"
        frames = await client.call(3, CREATE, {}, metadata={"Bad Key": ["v"]})
        assert status(frames)["code"] == "invalid_argument"


async def test_sockets_per_session_limit_is_4429(edge_settings: Settings, app: App,
                                                  http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, ws_max_sockets_per_session=2) as edge:
        anonymous = await connect(http, edge)
        created = (await anonymous.call(1, CREATE, {}))[1]["message"]
        first = await connect(http, edge, token=created["token"])
        second = await connect(http, edge, token=created["token"])  # noqa: F841 - held open
        third = await connect(http, edge, hello=False)
        await third.send({"type": "hello", "token": created["token"]})
        assert (await third.closed())[0] == 4429
        await first.ws.close()
        again: Client | None = None
        for _ in range(50):  # the slot frees when the server side has finished closing
            again = await connect(http, edge, hello=False)
            await again.send({"type": "hello", "token": created["token"]})
            if (await again.recv())["type"] == "welcome":
                break
            await asyncio.sleep(0.02)
        assert again is not None
        assert status(await again.call(1, CREATE, {})) == {"code": "ok"}


async def test_upgrade_without_our_subprotocol_is_refused(edge: Edge, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"{edge.url}/ws", protocols=("graphql-transport-ws",))
    assert error.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"{edge.url}/ws")
    assert error.value.status == 400
    async with http.get(f"{edge.url}/ws") as plain:
        assert plain.status == 426
    await still_works(http, edge)


async def test_origin_check(edge_settings: Settings, app: App, http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, allowed_origins=("https://app.example",)) as edge:
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await http.ws_connect(f"{edge.url}/ws", protocols=(JSON,), origin="https://evil.example")
        assert error.value.status == 403
        for origin in ("https://app.example", edge.url, f"http://localhost:{edge.addr.port}"):
            ws = await http.ws_connect(f"{edge.url}/ws", protocols=(JSON,), origin=origin)
            assert ws.protocol == JSON
            await ws.close()
        await still_works(http, edge)


@pytest.mark.parametrize("name", ["evil.example", "evil.example:{port}", "192.168.1.20:{port}"])
async def test_the_edge_origin_comes_from_its_configuration_never_from_host(
        edge: Edge, http: aiohttp.ClientSession, name: str) -> None:
    # DNS rebinding: a page on evil.example whose name now resolves to the edge sends
    # Origin and Host both naming evil.example. Equal, but neither is the edge's own.
    authority = name.format(port=edge.addr.port)
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"{edge.url}/ws", protocols=(JSON,), origin=f"http://{authority}",
                              headers={"Host": authority})
    assert error.value.status == 403
    await still_works(http, edge)


async def test_drain_sends_goaway_then_closes_1001(edge_settings: Settings, app: App,
                                                   http: aiohttp.ClientSession) -> None:
    async with custom_edge(edge_settings, app, drain_seconds=0.3) as edge:
        client = await connect(http, edge)
        await client.send({"type": "open", "id": 1, "method": HEALTH_WATCH, "message": {}, "end": True})
        assert (await client.recv())["type"] == "headers"
        await edge.drain()
    frames = [await client.recv() for _ in range(4)]
    assert [f["type"] for f in frames[:2]] == ["msg", "goaway"]
    assert frames[2]["type"] == "close"
    assert frames[2]["status"]["code"] == "unavailable"
    assert frames[3]["code"] == 1001


@pytest.mark.parametrize("token", ["x" * 300_000, "t\u00e9st-token", "bad\x01token"],
                         ids=["300k characters", "non-ASCII", "control character"])
async def test_a_token_that_cannot_be_ours_is_4401_before_any_upstream_call(
        edge: Edge, http: aiohttp.ClientSession, token: str) -> None:
    # A long token used to be encoded into upstream metadata (HPACK: seconds of CPU for a
    # few hundred KiB), a non-ASCII one to fail that encoding: both are refused at the door.
    client = await connect(http, edge, hello=False)
    await client.send({"type": "hello", "token": token})
    code, reason = await asyncio.wait_for(client.closed(), 10)
    assert code == 4401
    assert "printable ASCII" in reason
    assert token not in reason
    await still_works(http, edge)
