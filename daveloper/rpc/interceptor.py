"""Cross-cutting handling of every RPC the server serves, registered once.

grpclib has no interceptors; its ``RecvRequest`` event lets a listener replace
the method function, which is how this module wraps every handler — ours,
health and reflection alike — with:

* a request id (``x-request-id`` from the caller, else generated) in a ContextVar;
* the client's address in a ContextVar: the peer's, or the ``x-daveloper-client-address``
  that a trusted proxy (the edge, on loopback or in ``trusted_proxies``) reported;
* the maximum message size, enforced before a message body is read, and exactly one
  request message on calls that take one (a missing one is INVALID_ARGUMENT);
* the one mapping of exceptions to a status with ``google.rpc`` details, plus
  the request id in the trailers;
* the RPC metrics: calls by method and final status, duration, calls in flight;
* drain on shutdown: new calls are refused with UNAVAILABLE, running calls get
  until the drain deadline and then end with UNAVAILABLE (reason DRAINING), so
  clients see a proper status and resume elsewhere from the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server, Stream
from h2.exceptions import StreamClosedError

from daveloper.errors import InvalidArgument, ResourceExhausted, Unavailable, to_grpc_error
from daveloper.metrics import Metrics
from daveloper.rpc import grpclib_compat
from daveloper.rpc.context import client_address_var, method_var, request_id_var, trailers_var
from daveloper.tracing import server_span, set_status

__all__ = ["CLIENT_ADDRESS_KEY", "REQUEST_ID_KEY", "Interceptor"]

log = logging.getLogger("daveloper.rpc")

REQUEST_ID_KEY = "x-request-id"
#: Set by the edge: the address of the WebSocket or HTTP client a call is made for.
CLIENT_ADDRESS_KEY = "x-daveloper-client-address"
_MAX_REQUEST_ID = 128
#: Health checks and reflection: probed every few seconds, they would fill traces with noise.
_UNTRACED = ("/grpc.health.", "/grpc.reflection.")
#: How long a cancelled handler may run on before it is cancelled again (see ``_reassert_cancels``).
_CANCEL_RECHECK_SECONDS = 0.5

MethodFunc = Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]


#: What writing to a call raises once its client reset the stream or dropped the connection.
_STREAM_GONE = (StreamTerminatedError, StreamClosedError, ConnectionError)


def _client_left(exc: Exception) -> bool:
    """Whether a handler's exception comes from its client leaving, not from a fault of ours.

    Either it is a write to a stream that is gone, or the handler's task was
    cancelled (by grpclib, when the client reset the stream or its deadline
    passed) and the handler lost that cancel inside a library call and failed
    afterwards. Such calls are normal: they are logged quietly, and the
    handler ends as cancelled, which is what grpclib expects of a cancelled
    handler (anything else it logs as "Failed to handle cancellation").
    """
    task = asyncio.current_task()
    return isinstance(exc, _STREAM_GONE) or (task is not None and task.cancelling() > 0)


def _log_client_left(method: str, exc: BaseException) -> None:
    log.info("rpc ended: the client left", extra={"method": method, "error": type(exc).__name__})


class Interceptor:
    """Wraps every handler of one grpclib ``Server``; owns its drain state."""

    def __init__(self, *, max_message_bytes: int, trusted_proxies: Sequence[str] = (),
                 metrics: Metrics | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self._metrics = metrics if metrics is not None else Metrics()
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self._draining = False
        self._drain_deadline: float | None = None
        self._inflight: dict[asyncio.Task[Any], asyncio.Timeout] = {}
        self._idle = asyncio.Event()
        self._cancel_watch: asyncio.Task[None] | None = None
        self._idle.set()

    def install(self, server: Server) -> None:
        listen(server, RecvRequest, self._on_request)
        # grpclib decodes header bytes as ASCII: one byte over 0x7f in a token killed the whole
        # HTTP/2 connection. Latin-1 takes every byte, so such a value reaches authentication and
        # is refused there (UNAUTHENTICATED); ASCII headers decode the same.
        grpclib_compat.set_header_encoding(server, "latin-1")

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _on_request(self, event: RecvRequest) -> None:
        event.method_func = self._wrap(event.method_func, event.method_name)  # type: ignore[assignment]

    def _wrap(self, func: MethodFunc, method: str) -> MethodFunc:
        async def handle(stream: Stream[Any, Any]) -> None:
            supplied = stream.metadata.get(REQUEST_ID_KEY) if stream.metadata else None
            request_id = (
                supplied if isinstance(supplied, str) and 0 < len(supplied) <= _MAX_REQUEST_ID
                and supplied.isascii() and supplied.isprintable()  # it goes back out in the trailers
                else uuid.uuid4().hex
            )
            request_id_var.set(request_id)
            method_var.set(method)
            client_address_var.set(self._client_address(stream))
            trailers = {REQUEST_ID_KEY: request_id}
            trailers_var.set(trailers)
            self._limit_message_size(stream)
            self._require_request(stream)
            started = time.perf_counter()
            code = Status.OK
            series = self._metrics.rpc(method)
            series.in_flight.inc()
            traced = not method.startswith(_UNTRACED)
            with (server_span(method.lstrip("/"), stream.metadata, **{"rpc.system": "grpc"}) if traced
                  else contextlib.nullcontext()) as current:
                try:
                    if self._draining:
                        raise Unavailable("server is shutting down", reason="DRAINING", retry_after=0)
                    await self._run(func, stream)
                except asyncio.CancelledError:
                    code = Status.CANCELLED
                    raise
                except Exception as exc:
                    if _client_left(exc):
                        code = Status.CANCELLED
                        _log_client_left(method, exc)
                        raise asyncio.CancelledError from exc  # grpclib: the cancellation was handled
                    try:
                        code = await self._fail(stream, exc, method, request_id, trailers)
                    except _STREAM_GONE as gone:
                        code = Status.CANCELLED
                        _log_client_left(method, gone)
                        raise asyncio.CancelledError from gone
                else:
                    if not grpclib_compat.trailers_sent(stream):
                        try:
                            await stream.send_trailing_metadata(metadata=trailers)
                        except _STREAM_GONE as gone:
                            code = Status.CANCELLED
                            _log_client_left(method, gone)
                            raise asyncio.CancelledError from gone
                finally:
                    series.ended(code.name, time.perf_counter() - started)
                    set_status(current, code.name, code.value)
                    # The wrapper refers to the stream that refers to it: break the
                    # cycle so every call's buffers go at once, not at the next GC.
                    grpclib_compat.drop_recv_data(stream)
                    stream.__dict__.pop("recv_message", None)
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("rpc done", extra={"method": method,
                                                     "ms": round((time.perf_counter() - started) * 1000, 3)})

        return handle

    def _client_address(self, stream: Stream[Any, Any]) -> str:
        peer = stream.peer.addr()
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        reported = stream.metadata.get(CLIENT_ADDRESS_KEY) if stream.metadata else None
        if isinstance(reported, str) and reported and self._trusts(host):
            return reported[:64]
        return host

    def _trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or any(address in network for network in self._trusted)

    async def _run(self, func: MethodFunc, stream: Stream[Any, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        async with asyncio.timeout(self._drain_deadline) as timeout:
            self._inflight[task] = timeout
            self._idle.clear()
            if self._cancel_watch is None or self._cancel_watch.done():
                self._cancel_watch = asyncio.get_running_loop().create_task(self._reassert_cancels(),
                                                                            name="rpc-cancel-watch")
            try:
                await func(stream)
            finally:
                del self._inflight[task]
                if not self._inflight:
                    self._idle.set()
        # ``asyncio.timeout`` turned our own drain cancel into TimeoutError above;
        # only that case reaches here through ``timeout.expired()``.

    async def _reassert_cancels(self) -> None:
        """Cancel again a handler still running a while after it was cancelled; ends when none runs.

        grpclib cancels a handler when its client resets the stream. On Python 3.11 a
        cancel can be lost inside a library call (redis-py's ``asyncio.wait_for`` around
        socket writes, CPython bpo-42130): the handler then runs on, and one reading the
        reset stream waits forever, holding its in-flight slot. A task cancelled twice
        ``_CANCEL_RECHECK_SECONDS`` apart and still running is cancelled once more.
        """
        seen: set[asyncio.Task[Any]] = set()
        while self._inflight:
            await asyncio.sleep(_CANCEL_RECHECK_SECONDS)
            cancelling = {task for task in self._inflight if task.cancelling()}
            for task in cancelling & seen:
                task.cancel()
            seen = cancelling

    async def _fail(
        self, stream: Stream[Any, Any], exc: Exception, method: str, request_id: str, trailers: dict[str, str]
    ) -> Status:
        """Send the status ``exc`` maps to (unless one was sent); that status."""
        if isinstance(exc, TimeoutError) and self._draining:
            exc = Unavailable("server is shutting down", reason="DRAINING", retry_after=0)
        error = to_grpc_error(exc, request_id=request_id)
        if error.status is Status.INTERNAL and not isinstance(exc, GRPCError):
            log.error("rpc failed", exc_info=exc, extra={"method": method})
        else:
            log.info("rpc error", extra={"method": method, "status": error.status.name, "error": error.message})
        if not grpclib_compat.trailers_sent(stream):
            await stream.send_trailing_metadata(
                status=error.status,
                status_message=error.message,
                status_details=error.details,
                metadata=trailers,
            )
        return error.status

    def _limit_message_size(self, stream: Stream[Any, Any]) -> None:
        # grpclib reads a 5-byte prefix, then exactly the announced length. We
        # refuse an oversized length before its body is read or acknowledged,
        # so at most one HTTP/2 flow-control window is ever buffered.
        limit = self.max_message_bytes

        def wrap(read: grpclib_compat.RecvData) -> grpclib_compat.RecvData:
            async def recv_data(size: int) -> bytes:
                if size > limit:
                    raise ResourceExhausted(
                        f"message of {size} bytes exceeds the limit of {limit} bytes",
                        reason="MESSAGE_TOO_LARGE",
                        metadata={"limit_bytes": str(limit), "size_bytes": str(size)},
                    )
                return await read(size)

            return recv_data

        grpclib_compat.wrap_recv_data(stream, wrap)

    @staticmethod
    def _require_request(stream: Stream[Any, Any]) -> None:
        # A unary-request call whose client half-closed without a message reads None, which
        # every handler (ours, health, reflection) would trip over as INTERNAL.
        if grpclib_compat.cardinality(stream).client_streaming:
            return
        receive = stream.recv_message

        async def recv_message() -> Any:
            request = await receive()
            if request is None:
                raise InvalidArgument("the call carries no request message: send exactly one",
                                      violations=[("request", "missing")], reason="MISSING_REQUEST")
            return request

        stream.recv_message = recv_message  # type: ignore[method-assign]

    async def drain(self, seconds: float) -> None:
        """Refuse new calls; give running ones ``seconds`` to finish, then end them with UNAVAILABLE."""
        self._draining = True
        deadline = asyncio.get_running_loop().time() + seconds
        self._drain_deadline = deadline
        for timeout in self._inflight.values():
            when = timeout.when()
            if when is None or when > deadline:
                timeout.reschedule(deadline)
        # Handlers that refuse to stop get a little grace after the deadline.
        async with asyncio.timeout(seconds + 1.0):
            await self._idle.wait()
