"""The aiohttp application, the ``/ws`` upgrade, and the running :class:`Edge`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from grpclib.server import Server

from daveloper.config import Address, Settings
from daveloper.descriptors import load_descriptor_pool
from daveloper.edge.bridge import Upstream
from daveloper.edge.codec import MessageCodec
from daveloper.edge.http import STATE, call_method, healthz, readyz, static_file
from daveloper.edge.protocol import SUBPROTOCOLS
from daveloper.edge.socket import EdgeSocket
from daveloper.edge.state import EdgeState
from daveloper.edge.wire import wire_for
from daveloper.health import HealthMonitor
from daveloper.metrics import Metrics, metrics_handler
from daveloper.registry import InstanceRegistry
from daveloper.rpc.connections import ConnectionGuard, RequestStart
from daveloper.tls import edge_context, loopback_client_context

__all__ = ["Edge", "build_app", "open_edge", "own_origins"]

log = logging.getLogger("daveloper.edge")


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def own_origins(host: str, port: int, *, tls: bool) -> frozenset[str]:
    """The origins of pages the edge itself serves, from its configuration, never from a request.

    The listen address (unless it is a wildcard) and the loopback names, on the
    bound port. Any other name (a LAN name, a public one behind a proxy) is
    listed in ``DAVELOPER_ALLOWED_ORIGINS``: trusting the request's ``Host``
    would let a page on a rebound DNS name (``Origin`` and ``Host`` both
    ``evil.example``) drive a visitor's local edge.
    """
    scheme = "https" if tls else "http"
    hosts = {*_LOOPBACK_NAMES}
    if host not in _WILDCARDS:
        hosts.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    suffix = "" if port == (443 if tls else 80) else f":{port}"
    return frozenset(f"{scheme}://{name.lower()}{suffix}" for name in hosts)


def _origin_allowed(request: web.Request, own: frozenset[str], allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), one of the edge's own origins, or one on the allow-list.

    Browsers send cookies with WebSocket upgrades and apply no same-origin
    policy to them, so without this check any page could use a visitor's socket.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    return origin in own or origin in (o.lower() for o in allowed)


def _refusal(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: check Origin and subprotocol before upgrading, then serve the socket."""
    state = request.app[STATE]
    settings = state.settings
    if not _origin_allowed(request, state.own_origins, settings.allowed_origins):
        return _refusal(403, "origin not allowed: list it in DAVELOPER_ALLOWED_ORIGINS")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.json_response({"error": "WebSocket upgrade required"}, status=426,
                                 headers={"Upgrade": "websocket"})
    if state.draining:
        return _refusal(503, "server is shutting down")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
    if chosen is None:
        # aiohttp would accept with no subprotocol; browsers then fail the
        # handshake and other clients would guess the codec: refuse clearly.
        return _refusal(400, "offer a supported subprotocol in Sec-WebSocket-Protocol",
                        supported=list(SUBPROTOCOLS))
    ws = web.WebSocketResponse(
        protocols=(chosen,),
        heartbeat=max(1.0, min(30.0, settings.ws_idle_seconds / 2)),
        max_msg_size=settings.ws_max_frame_bytes,
    )
    await ws.prepare(request)
    socket = EdgeSocket(ws, wire_for(chosen, state.codec), state, client_address=state.client_address(request))
    state.sockets.add(socket)
    state.metrics.edge_sockets.inc()
    try:
        await socket.serve()
    finally:
        state.sockets.discard(socket)
        state.metrics.edge_sockets.dec()
    return ws


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def build_app(state: EdgeState) -> web.Application:
    """The edge's routes on a fresh application holding ``state``."""
    app = web.Application(client_max_size=state.settings.ws_max_frame_bytes)
    app[STATE] = state
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(state.metrics, token=state.settings.metrics_token))
    app.router.add_get("/ws", websocket)
    app.router.add_post(r"/{service:[A-Za-z_][A-Za-z0-9_.]*}/{method:[A-Za-z_][A-Za-z0-9_]*}", call_method)
    app.router.add_get("/", static_file)
    app.router.add_get("/{path:.+}", static_file)
    return app


class Edge:
    """A running edge: its bound address, and :meth:`drain` for a graceful stop."""

    def __init__(self, state: EdgeState, runner: web.AppRunner, addr: Address, *,
                 connections: ConnectionGuard | None = None) -> None:
        self.state = state
        self._runner = runner
        #: The listener's connection bounds (slow openings, connections per address).
        self.connections = connections
        #: The address actually bound (the real port when settings asked for 0).
        self.addr = addr
        self._drained = False

    @property
    def url(self) -> str:
        """``http://host:port`` of the edge (``https`` with TLS)."""
        return f"{'https' if self.state.settings.tls_cert_file else 'http'}://{self.addr}"

    async def drain(self) -> None:
        """Send go-away on every socket, let streams finish up to ``drain_seconds``, then close them with 1001."""
        if self._drained:
            return
        self._drained = True
        state = self.state
        state.draining = True
        sockets = list(state.sockets)
        log.info("edge draining", extra={"sockets": len(sockets),
                                         "streams": sum(s.open_streams for s in sockets)})
        for socket in sockets:
            await socket.go_away()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(state.settings.drain_seconds):
                await asyncio.gather(*(s.wait_idle() for s in sockets))
        await asyncio.gather(*(s.shut_down() for s in list(state.sockets)))


@contextlib.asynccontextmanager
async def open_edge(settings: Settings, *, upstreams: Sequence[Address], health: HealthMonitor,
                    registry: InstanceRegistry | None = None, metrics: Metrics | None = None,
                    local: tuple[Address, Server] | None = None) -> AsyncIterator[Edge]:
    """Start the edge on ``settings.edge_addr`` (port 0 = a free port) and yield it.

    Calls go to the gRPC servers ``upstreams`` (this process's ``App.grpc_addr``
    or remote ones) and, with a ``registry``, to every instance registered
    there. ``local`` names the gRPC server of this process (its address and
    grpclib ``Server``): calls to that address run in process, with no HTTP/2
    connection in between. Sockets, streams, upstream retries and ``GET /metrics``
    use ``metrics`` (none given: the edge's own).
    On exit: go-away, drain, close.
    """
    upstream_tls = loopback_client_context() if settings.tls_cert_file else None
    metrics = metrics if metrics is not None else Metrics()
    upstream = Upstream(upstreams, ssl=upstream_tls, metrics=metrics, local=local)
    state = EdgeState(settings, MessageCodec(load_descriptor_pool()), upstream, health, metrics)
    # handler_cancellation: a client that disconnects cancels its handler, and with it the
    # upstream call (a server stream would otherwise wait, holding it, until its next message).
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False,
                           shutdown_timeout=max(settings.drain_seconds, 0.1), handler_cancellation=True)
    await runner.setup()
    connections = ConnectionGuard(
        header_seconds=settings.header_timeout_seconds, per_address=settings.max_connections_per_address,
        opening=RequestStart, on_refused=lambda reason: state.metrics.connections_refused.labels("edge", reason).inc(),
        shared=settings.trusted_proxies)
    discovery: asyncio.Task[None] | None = None
    listener: asyncio.Server | None = None
    try:
        if registry is not None:
            discovery = asyncio.create_task(registry.follow(upstream.set_addresses, static=upstreams),
                                            name="edge-discovery")
        # Our own listener rather than aiohttp's TCPSite, so every connection passes the guard
        # (a deadline for its first request's headers, a cap per client address).
        assert runner.server is not None
        tls = edge_context(settings)
        listener = await asyncio.get_running_loop().create_server(
            connections.wrap(runner.server), settings.edge_addr.host, settings.edge_addr.port, ssl=tls,
            backlog=settings.listen_backlog,
            ssl_handshake_timeout=(settings.header_timeout_seconds or None) if tls is not None else None)
        port = listener.sockets[0].getsockname()[1] if listener.sockets else settings.edge_addr.port
        edge = Edge(state, runner, Address(settings.edge_addr.host, int(port)), connections=connections)
        state.own_origins = own_origins(settings.edge_addr.host, int(port), tls=bool(settings.tls_cert_file))
        log.info("edge listening", extra={"edge": str(edge.addr), "upstreams": [str(a) for a in upstreams],
                                          "discovery": registry is not None})
        try:
            yield edge
        finally:
            await edge.drain()
    finally:
        if discovery is not None:
            discovery.cancel()
            await asyncio.wait([discovery])
        if listener is not None:
            listener.close()
        await runner.cleanup()  # closes the connections the listener accepted
        upstream.close()
