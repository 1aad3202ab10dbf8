"""HTTP/JSON routes: Connect-style unary calls, server streams as NDJSON or SSE, health, static files.

``POST /<package>.<Service>/<Method>`` with a JSON body calls a unary or
server-streaming method (client and bidi streaming need the WebSocket). The
token comes from ``Authorization: Bearer``; ``Connect-Timeout-Ms`` sets the
deadline. Errors answer with the Connect HTTP status and error JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

from aiohttp import web
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from daveloper.edge.bridge import call_status, status_of, unary
from daveloper.edge.codec import InvalidMessage, Method, UnrepresentableMessage
from daveloper.edge.metadata import expose, sanitize_http
from daveloper.edge.state import EdgeState, credentials
from daveloper.edge.status import HTTP_STATUS, RpcStatus, edge_status, retry_delay
from daveloper.sessions import MAX_TOKEN_CHARS, well_formed_token
from daveloper.tracing import inject, server_span

__all__ = ["STATE", "STATIC_DIR", "call_method", "healthz", "readyz", "static_file"]

log = logging.getLogger("daveloper.edge")

STATE = web.AppKey("daveloper_edge_state", EdgeState)
STATIC_DIR = Path(__file__).parent / "static"
UNARY_TIMEOUT = 60.0
_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_SSE = "text/event-stream"
#: Headers for pages: no inline scripts, sockets to ourselves only, never framed.
STATIC_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _error(state: EdgeState, status: RpcStatus, *, http_status: int | None = None) -> web.Response:
    headers = {f"trailer-{k}": ", ".join(v) for k, v in expose(status.trailers).items()}
    if (delay := retry_delay(status)) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(delay)))
    return web.Response(status=http_status or HTTP_STATUS.get(status.code, 500),
                        text=_dumps(state.codec.connect_status(status)), content_type=_JSON, headers=headers)


def _refuse(state: EdgeState, code: Status, message: str, reason: str, *, http_status: int | None = None,
            violations: list[tuple[str, str]] | None = None) -> web.Response:
    status = edge_status(code, message, reason=reason, violations=violations or ())
    return _error(state, status, http_status=http_status)


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def _timeout(request: web.Request, method: Method) -> float | None:
    raw = request.headers.get("Connect-Timeout-Ms", "")
    if raw.isdigit() and 0 < len(raw) <= 10 and int(raw) > 0:
        return int(raw) / 1000
    return UNARY_TIMEOUT if method.cardinality is Cardinality.UNARY_UNARY else None


async def call_method(request: web.Request) -> web.StreamResponse:
    """``POST /pkg.Service/Method``: see the module docstring and the protocol document."""
    state = request.app[STATE]
    path = f"/{request.match_info['service']}/{request.match_info['method']}"
    method = state.codec.methods.get(path)
    if method is None:
        return _refuse(state, Status.UNIMPLEMENTED, f"unknown method {path[:200]}", "UNKNOWN_METHOD")
    if method.cardinality.client_streaming:
        return _refuse(state, Status.UNIMPLEMENTED,
                       f"{path} is client- or bidi-streaming: call it over the WebSocket at /ws",
                       "STREAMING_NEEDS_WEBSOCKET")
    if request.content_type != _JSON:
        return _refuse(state, Status.INVALID_ARGUMENT, "send the request as Content-Type: application/json",
                       "UNSUPPORTED_MEDIA_TYPE", http_status=415)
    if state.draining:
        return _refuse(state, Status.UNAVAILABLE, "server is shutting down", "DRAINING")
    limit = state.settings.ws_max_frame_bytes  # also the app's client_max_size
    # Refuse from the announced length before reading a byte; the read below
    # is capped too (client_max_size) for bodies that announce none.
    if request.content_length is not None and request.content_length > limit:
        return _refuse(state, Status.RESOURCE_EXHAUSTED, f"request body exceeds {limit} bytes", "BODY_TOO_LARGE",
                       http_status=413)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(state, Status.RESOURCE_EXHAUSTED, f"request body exceeds {limit} bytes", "BODY_TOO_LARGE",
                       http_status=413)
    try:
        data = state.codec.to_bytes(method.input, json.loads(body or b"{}"))
    except (ValueError, RecursionError, InvalidMessage) as exc:
        return _refuse(state, Status.INVALID_ARGUMENT, f"invalid {method.input.DESCRIPTOR.full_name}: {exc}",
                       "INVALID_MESSAGE", violations=[("body", str(exc))])
    token = _token(request)
    if token and not well_formed_token(token):
        return _refuse(state, Status.UNAUTHENTICATED,
                       f"malformed bearer token: a token is printable ASCII of at most {MAX_TOKEN_CHARS} characters",
                       "TOKEN_MALFORMED")
    metadata = [*sanitize_http(request.headers), *credentials(token, state.client_address(request))]
    with server_span(f"edge {path.lstrip('/')}", request.headers, **{"rpc.system": "http"}):
        inject(metadata)
        return await _call(request, state, method, data, metadata)


async def _call(request: web.Request, state: EdgeState, method: Method, data: bytes,
                metadata: list[tuple[str, str | bytes]]) -> web.StreamResponse:
    timeout = _timeout(request, method)
    if method.cardinality is Cardinality.UNARY_UNARY:
        assert timeout is not None
        response, status = await unary(state.upstream, method, data, metadata=metadata, time_limit=timeout)
        if not status.ok:
            return _error(state, status)
        headers = {f"trailer-{k}": ", ".join(v) for k, v in expose(status.trailers).items()}
        try:
            result = state.codec.to_json(method.output, response)
        except UnrepresentableMessage as exc:
            return _refuse(state, Status.INTERNAL, str(exc), "RESPONSE_NOT_JSON")
        return web.Response(text=_dumps(result), content_type=_JSON, headers=headers)
    return await _server_stream(request, state, method, data, metadata, timeout)


async def _server_stream(request: web.Request, state: EdgeState, method: Method, data: bytes,
                         metadata: list[tuple[str, str | bytes]], time_limit: float | None) -> web.StreamResponse:
    """Messages as NDJSON ``{"result": msg}`` lines or SSE ``message`` events, then one status record."""
    sse = _SSE in request.headers.get("Accept", "")
    response = web.StreamResponse(headers={
        "Content-Type": _SSE if sse else _NDJSON,
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # proxies must not buffer a stream
    })

    async def write(kind: str, value: dict[str, Any]) -> None:
        text = f"event: {kind}\ndata: {_dumps(value)}\n\n" if sse else _dumps(
            {"result": value} if kind == "message" else value) + "\n"
        await response.write(text.encode())

    status: RpcStatus | None = None
    try:
        async with (asyncio.timeout(time_limit),
                    state.upstream.open(method, metadata=metadata, timeout=time_limit) as call):
            try:
                await call.send_message(data, end=True)
                message = await call.recv_message()  # the first: errors before it still get an HTTP status
                await response.prepare(request)
                while message is not None:
                    await write("message", state.codec.to_json(method.output, message))
                    message = await call.recv_message()
                await call.recv_trailing_metadata()
                status = call_status(call)
            except GRPCError as exc:
                status = call_status(call, exc)
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away: nothing to tell it
    except Exception as exc:  # map upstream failures; anything else is a bug, logged
        status = status_of(exc)
        if status is None:
            log.error("http stream failed", exc_info=exc, extra={"method": method.path})
            status = edge_status(Status.INTERNAL, "edge error", reason="EDGE_INTERNAL")
    assert status is not None
    if not response.prepared:
        return _error(state, status)
    record: dict[str, Any] = {"status": state.codec.connect_status(status)}
    if status.trailers:
        record["trailers"] = expose(status.trailers)
    await write("status", record)
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves HTTP."""
    return web.json_response({"status": "serving"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when every dependency probe passes and the edge is not draining, else 503."""
    state = request.app[STATE]
    results = await state.health.check_once()
    ready = state.health.ready(results) and not state.draining
    body = {
        "status": "serving" if ready else "not_serving",
        "draining": state.draining,
        "dependencies": {name: "serving" if ok else "not_serving" for name, ok in results.items()},
    }
    return web.json_response(body, status=200 if ready else 503)


async def static_file(request: web.Request) -> web.StreamResponse:
    """Files of the ``static`` directory at ``/`` (``index.html`` for ``/``), with security headers."""
    name = request.match_info.get("path", "") or "index.html"
    root = STATIC_DIR.resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise web.HTTPNotFound(headers={"X-Content-Type-Options": "nosniff"})
    return web.FileResponse(target, headers=STATIC_HEADERS)
