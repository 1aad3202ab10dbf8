"""HTTP/JSON calls, health endpoints and static files, through aiohttp's client and the curl binary."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from daveloper.app import App
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from daveloper.health import HealthMonitor
from daveloper.infra.redis import redis_probe
from tests.edge.client import connect, messages, status
from tests.edge.test_websocket import new_token, upload_json

pytestmark = pytest.mark.timeout(60)

JSON_HEADERS = {"Content-Type": "application/json"}


async def post(http: aiohttp.ClientSession, edge: Edge, path: str, body: Any,
               **headers: str) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(f"{edge.url}{path}", data=json.dumps(body), headers={**JSON_HEADERS, **headers}) as r:
        return r.status, await r.json(content_type=None), r


async def test_unary_create_and_get(edge: Edge, http: aiohttp.ClientSession) -> None:
    code, created, _ = await post(http, edge, "/daveloper.v1.SessionService/CreateSession", {"ttl": "60s"})
    assert code == 200
    code, got, response = await post(http, edge, "/daveloper.v1.SessionService/GetSession", {},
                                     Authorization=f"Bearer {created['token']}", **{"X-Request-Id": "http-1"})
    assert code == 200
    assert got["session"]["id"] == created["session"]["id"]
    assert response.headers["trailer-x-request-id"] == "http-1"


@pytest.mark.parametrize(("path", "body", "headers", "http_status", "connect_code"), [
    ("/daveloper.v1.SessionService/GetSession", {}, {}, 401, "unauthenticated"),
    ("/daveloper.v1.Nope/Nothing", {}, {}, 501, "unimplemented"),
    ("/daveloper.v1.AgentService/Chat", {}, {}, 501, "unimplemented"),
    ("/daveloper.v1.SessionService/CreateSession", {"ttl": 5}, {}, 400, "invalid_argument"),
    ("/daveloper.v1.SessionService/CreateSession", [1], {}, 400, "invalid_argument"),
    ("/grpc.health.v1.Health/Check", {"service": "nope"}, {}, 404, "not_found"),
])
async def test_errors_have_http_status_and_connect_json(edge: Edge, http: aiohttp.ClientSession, path: str,
                                                        body: Any, headers: dict[str, str], http_status: int,
                                                        connect_code: str) -> None:
    code, error, _ = await post(http, edge, path, body, **headers)
    assert (code, error["code"]) == (http_status, connect_code)
    assert error.get("message") or path.startswith("/grpc.")  # grpclib's Health sends no message


async def test_bad_json_and_media_type(edge: Edge, http: aiohttp.ClientSession) -> None:
    url = f"{edge.url}/daveloper.v1.SessionService/CreateSession"
    async with http.post(url, data=b"{nope", headers=JSON_HEADERS) as response:
        assert response.status == 400
        error = await response.json()
        assert error["details"][-1]["type"] == "google.rpc.BadRequest"
    async with http.post(url, data=b"{}", headers={"Content-Type": "text/plain"}) as response:
        assert response.status == 415


async def test_oversized_body_is_refused(edge_settings: Settings, app: App, http: aiohttp.ClientSession) -> None:
    small = edge_settings.replace(ws_max_frame_bytes=1024)
    async with open_edge(small, upstreams=[app.grpc_addr], health=app.health) as edge:
        url = f"{edge.url}/daveloper.v1.SessionService/CreateSession"
        body = json.dumps({"labels": {"x": "y" * 5000}}).encode()
        async with http.post(url, data=body, headers=JSON_HEADERS) as response:
            assert response.status == 413
            assert (await response.json())["code"] == "resource_exhausted"

        async def chunks() -> Any:  # no Content-Length: the read itself is capped
            for i in range(0, len(body), 500):
                yield body[i:i + 500]

        async with http.post(url, data=chunks(), headers=JSON_HEADERS) as response:
            assert response.status == 413


async def watch_ingestion_body(http: aiohttp.ClientSession, edge: Edge) -> tuple[str, dict[str, Any]]:
    token = await new_token(http, edge)
    client = await connect(http, edge, token=token)
    upload = await upload_json(client, 1)
    ingestion_id = messages(upload)[0]["event"]["ingestionId"]
    return token, {"ingestionId": ingestion_id}


async def test_server_stream_as_ndjson(edge: Edge, http: aiohttp.ClientSession) -> None:
    token, body = await watch_ingestion_body(http, edge)
    async with http.post(f"{edge.url}/daveloper.v1.DocumentService/WatchIngestion", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) async for line in response.content]
    assert "started" in lines[0]["result"]["event"]
    assert "stored" in lines[-2]["result"]["event"]
    assert lines[-1]["status"] == {"code": "ok"}
    assert "x-request-id" in lines[-1]["trailers"]


async def test_server_stream_as_sse_with_final_status(edge: Edge, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{edge.url}/grpc.health.v1.Health/Watch", json={},
                         headers={"Accept": "text/event-stream", "Connect-Timeout-Ms": "300"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        text = (await response.read()).decode()
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    assert events[0] == ["event: message", 'data: {"status":"SERVING"}']
    assert events[-1][0] == "event: status"
    assert json.loads(events[-1][1].removeprefix("data: "))["status"]["code"] == "deadline_exceeded"


async def test_server_stream_error_before_first_message_gets_http_status(edge: Edge,
                                                                        http: aiohttp.ClientSession) -> None:
    code, error, _ = await post(http, edge, "/daveloper.v1.DocumentService/WatchIngestion", {"ingestionId": "x"})
    assert (code, error["code"]) == (401, "unauthenticated")


async def test_health_endpoints(edge: Edge, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{edge.url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{edge.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["dependencies"] == {"redis": "serving", "qdrant": "serving", "llm": "serving"}


async def test_readyz_is_503_when_a_dependency_is_down(edge_settings: Settings, app: App,
                                                       http: aiohttp.ClientSession) -> None:
    # A real Redis client pointed at a port where nothing listens.
    dead = Redis(host="127.0.0.1", port=1, socket_timeout=0.5, socket_connect_timeout=0.5)
    monitor = HealthMonitor([redis_probe(dead, timeout=0.5)])
    try:
        async with open_edge(edge_settings, upstreams=[app.grpc_addr], health=monitor) as edge:
            async with http.get(f"{edge.url}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["dependencies"] == {"redis": "not_serving"}
            async with http.get(f"{edge.url}/healthz") as response:
                assert response.status == 200
    finally:
        await dead.aclose()


async def test_static_index_with_security_headers(edge: Edge, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{edge.url}/") as response:
        assert response.status == 200
        assert "<html" in await response.text()
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/missing.js", "/..%2F..%2Fconfig.py", "/../edge/server.py"):
        async with http.get(f"{edge.url}{path}") as response:
            assert response.status == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
async def test_curl_unary_and_server_stream(edge: Edge) -> None:
    async def curl(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "10", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    created = json.loads(await curl("-X", "POST", "-H", "Content-Type: application/json", "-d", "{}",
                                    f"{edge.url}/daveloper.v1.SessionService/CreateSession"))
    assert created["token"]
    got = json.loads(await curl("-H", "Content-Type: application/json",
                                "-H", f"Authorization: Bearer {created['token']}",
                                "-d", "{}", f"{edge.url}/daveloper.v1.SessionService/GetSession"))
    assert got["session"]["id"] == created["session"]["id"]
    lines = (await curl("-N", "-H", "Content-Type: application/json", "-H", "Connect-Timeout-Ms: 300", "-d", "{}",
                        f"{edge.url}/grpc.health.v1.Health/Watch")).splitlines()
    assert json.loads(lines[0]) == {"result": {"status": "SERVING"}}
    assert json.loads(lines[-1])["status"]["code"] == "deadline_exceeded"
    assert status([{"type": "close", "status": json.loads(lines[-1])["status"]}])["code"] == "deadline_exceeded"


async def test_a_non_ascii_bearer_token_is_401_not_500(edge: Edge, http: aiohttp.ClientSession) -> None:
    code, body, _ = await post(http, edge, "/daveloper.v1.SessionService/GetSession", {},
                               Authorization="Bearer t\u00e9st-token")
    assert code == 401
    assert body["code"] == "unauthenticated"
    assert "t\u00e9st" not in json.dumps(body)


async def test_an_over_long_bearer_token_is_401_before_any_upstream_call(app: App, edge: Edge,
                                                                        http: aiohttp.ClientSession) -> None:
    # Longer than any token the server issues, short enough for aiohttp's header line limit: our check
    # refuses it, before it is encoded into upstream metadata (HPACK is superlinear in header size).
    def upstream_calls() -> float:
        return sum(sample.value for metric in app.metrics.registry.collect() if metric.name == "daveloper_rpc_requests"
                   for sample in metric.samples if sample.name.endswith("_total"))

    before = upstream_calls()
    code, body, _ = await post(http, edge, "/daveloper.v1.SessionService/GetSession", {},
                               Authorization="Bearer " + "A" * 6000)
    assert code == 401
    assert body["code"] == "unauthenticated"
    assert "AAAA" not in json.dumps(body)
    assert upstream_calls() == before
    await post(http, edge, "/daveloper.v1.SessionService/CreateSession", {})
    assert upstream_calls() == before + 1  # what a call that does go upstream counts


async def test_a_client_leaving_a_server_stream_cancels_the_upstream_call_at_once(
        app: App, edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    # Ten `curl --max-time 1` Watch calls: each upstream call used to stay open (holding what
    # it holds, e.g. a Redis connection) until the next event, then log ERROR tracebacks.
    async def leave_after_the_first_line() -> None:
        async with (aiohttp.ClientSession() as own,
                    own.post(f"{edge.url}/grpc.health.v1.Health/Watch", json={}) as response):
            assert response.status == 200
            await response.content.readline()
        # Leaving both contexts closes the connection mid-stream.

    await asyncio.gather(*(leave_after_the_first_line() for _ in range(10)))
    loop = asyncio.get_running_loop()
    left = loop.time()
    while edge.state.upstream.streams or app.interceptor.inflight:
        assert loop.time() - left < 1.0, (edge.state.upstream.streams, app.interceptor.inflight)
        await asyncio.sleep(0.02)
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
