"""Prometheus metrics on a registry of our own, exposed at the edge's ``/metrics`` and an optional port.

An app counts into one :class:`Metrics` (its own registry, never
prometheus-client's global one) and hands it to every component it builds:
``serve`` makes the process's and passes it down; a caller of ``open_app``
may pass its own (tests read one app's values while other apps run in the
same process). There is no module-level instance: a component built without
one (by hand, in a test) counts into a registry of its own. Label children are
bound once where the label values are known ahead (a method, a provider, an
outcome) and cached per label value otherwise (Redis commands), so a call
costs a dict lookup and an increment.

Instrumentation points are few on purpose: the RPC interceptor (every call),
the edge's sockets and streams, the agent (turns, tokens, tools, cancel,
model calls), ingestion and the crawler, the event log (resumes, expired
cursors), the rate limiter, and thin wrappers on the Redis and Qdrant clients
(:func:`instrument_redis`, :func:`instrument_qdrant`). A component with series
of its own adds them to ``Metrics.registry`` (any prometheus-client collector).

``GET /metrics`` needs no credentials unless a token is configured
(``metrics_token``): operators scrape it, the public should not reach it.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.trace import SpanKind
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from daveloper.config import Address
from daveloper.tracing import enabled as tracing_enabled
from daveloper.tracing import span

__all__ = ["MethodSeries", "Metrics", "instrument_qdrant", "instrument_redis", "metrics_handler",
           "open_metrics_server"]

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds: from sub-millisecond Redis calls to minute-long model streams.
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_TOKENS_PER_SECOND = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every series Daveloper exports, on one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)

        # gRPC server side (every call, ours, health and reflection)
        self.rpc_requests = Counter("daveloper_rpc_requests", "RPCs handled, by method and final status code",
                                    ["method", "code"], registry=r)
        self.rpc_seconds = Histogram("daveloper_rpc_duration_seconds", "RPC duration, by method", ["method"],
                                     buckets=_LATENCY, registry=r)
        self.rpc_in_flight = Gauge("daveloper_rpc_in_flight", "RPCs running now (streams included), by method",
                                   ["method"], registry=r)

        # the edge
        self.edge_sockets = Gauge("daveloper_edge_sockets", "WebSockets open now", registry=r)
        self.edge_streams = Gauge("daveloper_edge_streams", "WebSocket streams open now", registry=r)
        self.edge_upstream_retries = Counter("daveloper_edge_upstream_retries",
                                             "Calls the edge sent to another gRPC instance, by cause", ["cause"],
                                             registry=r)
        self.connections_refused = Counter("daveloper_connections_refused",
                                           "Connections closed by a listener's bounds, by listener and reason "
                                           "(slow_opening, per_address)", ["listener", "reason"], registry=r)
        self.redactions = Counter("daveloper_redactions",
                                  "Values redacted from text sent to an external LLM or embedding endpoint, by kind",
                                  ["kind"], registry=r)

        # the agent
        self.chat_turns = Counter("daveloper_chat_turns", "Chat turns ended, by outcome", ["outcome"], registry=r)
        self.chat_ttft = Histogram("daveloper_chat_time_to_first_token_seconds",
                                   "Turn start to its first token", buckets=_LATENCY, registry=r)
        self.chat_turn_seconds = Histogram("daveloper_chat_turn_duration_seconds", "Turn start to its end",
                                           buckets=_LATENCY, registry=r)
        self.chat_tokens = Counter("daveloper_chat_completion_tokens", "Completion tokens the model produced",
                                   registry=r)
        self.chat_tokens_per_second = Histogram("daveloper_chat_tokens_per_second",
                                                "Completion tokens per second of a turn, first token to end",
                                                buckets=_TOKENS_PER_SECOND, registry=r)
        self.cancel_seconds = Histogram("daveloper_cancel_latency_seconds",
                                        "The owner sees a cancel request to its work stopped, by kind "
                                        "(turn, job, ingestion)", ["kind"], buckets=_LATENCY, registry=r)
        self.tool_calls = Counter("daveloper_tool_calls", "Agent tool calls, by tool and outcome",
                                  ["tool", "outcome"], registry=r)
        self.tool_seconds = Histogram("daveloper_tool_duration_seconds", "Agent tool call duration, by tool",
                                      ["tool"], buckets=_LATENCY, registry=r)

        # ingestion and scraping
        self.ingestions = Counter("daveloper_ingestions", "Uploads and fetched pages ingested, by outcome",
                                  ["outcome"], registry=r)
        self.ingested_bytes = Counter("daveloper_ingested_bytes", "Bytes of documents ingested", registry=r)
        self.ingest_seconds = Histogram("daveloper_ingest_duration_seconds", "Parse, chunk, embed and store",
                                        buckets=_LATENCY, registry=r)
        self.scrape_pages = Counter("daveloper_scrape_pages", "Pages the scraper handled, by outcome",
                                    ["outcome"], registry=r)

        # the event log
        self.eventlog_reads = Counter("daveloper_eventlog_reads", "Event-log reads, by kind (start or resume)",
                                      ["kind"], registry=r)
        self.eventlog_expired = Counter("daveloper_eventlog_expired_cursors",
                                        "Reads refused because the cursor is no longer retained", registry=r)
        self.eventlog_append_batch = Histogram("daveloper_eventlog_append_batch_size",
                                               "Appends sent to Redis in one pipeline (made close together)",
                                               buckets=_BATCH_SIZES, registry=r)

        # abuse control
        self.rate_limited = Counter("daveloper_rate_limited", "Calls refused by a rate limit, by method class",
                                    ["limit"], registry=r)

        # dependencies
        self.dependency_seconds = Histogram("daveloper_dependency_duration_seconds",
                                            "Calls to Redis, Qdrant and the LLM, by dependency and operation",
                                            ["dependency", "operation"], buckets=_LATENCY, registry=r)
        self.dependency_errors = Counter("daveloper_dependency_errors", "Failed calls to a dependency",
                                         ["dependency", "operation"], registry=r)
        self.dependency_up = Gauge("daveloper_dependency_up", "1 if the last health probe passed",
                                   ["dependency"], registry=r)
        self.llm_first_event = Histogram("daveloper_llm_time_to_first_event_seconds",
                                         "Model request to its first streamed event", ["provider"],
                                         buckets=_LATENCY, registry=r)
        self.circuit_state = Gauge("daveloper_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                   ["name"], registry=r)
        self.circuits_open = Gauge("daveloper_circuits_open", "Open per-host breakers of a breaker map",
                                   ["name"], registry=r)
        self.circuit_rejections = Counter("daveloper_circuit_rejections", "Calls refused by an open circuit",
                                          ["name"], registry=r)

        # scale-out
        self.work_reaped = Counter("daveloper_work_reaped", "Work of lost instances finished here, by kind",
                                   ["kind"], registry=r)
        self.work_stalled = Counter("daveloper_work_stalled", "Work stopped here for making no progress, by kind",
                                    ["kind"], registry=r)

        self._methods: dict[str, MethodSeries] = {}
        self._dependencies: dict[tuple[str, str], Histogram] = {}

    def exposition(self) -> bytes:
        """Every series in the Prometheus text format."""
        return generate_latest(self.registry)

    def rpc(self, method: str) -> MethodSeries:
        """``method``'s RPC series, bound on its first call (the server's methods are a bounded set)."""
        series = self._methods.get(method)
        if series is None:
            series = self._methods[method] = MethodSeries(self, method)
        return series

    @contextlib.contextmanager
    def timed(self, dependency: str, operation: str) -> Iterator[None]:
        """Observe a dependency call's duration; count it as an error if it raises (a cancel is not one)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.dependency_errors.labels(dependency, operation).inc()
            raise
        finally:
            key = (dependency, operation)
            seconds = self._dependencies.get(key)
            if seconds is None:
                seconds = self._dependencies[key] = self.dependency_seconds.labels(dependency, operation)
            seconds.observe(time.perf_counter() - started)


class MethodSeries:
    """One RPC method's series, their label children bound once."""

    __slots__ = ("_codes", "_method", "_requests", "duration", "in_flight")

    def __init__(self, metrics: Metrics, method: str) -> None:
        self._requests = metrics.rpc_requests
        self._method = method
        self._codes: dict[str, Counter] = {}
        self.in_flight = metrics.rpc_in_flight.labels(method)
        self.duration = metrics.rpc_seconds.labels(method)

    def ended(self, code: str, seconds: float) -> None:
        """A call that :attr:`in_flight` counted ended with status ``code`` after ``seconds``."""
        self.in_flight.dec()
        self.duration.observe(seconds)
        requests = self._codes.get(code)
        if requests is None:
            requests = self._codes[code] = self._requests.labels(self._method, code)
        requests.inc()


async def _observed(call: Callable[..., Awaitable[T]], metrics: Metrics, dependency: str, name: str,
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    if not tracing_enabled():  # every Redis command passes here: no span machinery when not tracing
        with metrics.timed(dependency, name):
            return await call(*args, **kwargs)
    with span(f"{dependency} {name}", SpanKind.CLIENT), metrics.timed(dependency, name):
        return await call(*args, **kwargs)


def _timed(call: Callable[..., Awaitable[T]], metrics: Metrics, dependency: str,
           operation: str | None = None) -> Callable[..., Any]:
    @functools.wraps(call)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        name = operation or (str(args[0]).lower() if args else "?")
        return await _observed(call, metrics, dependency, name, args, kwargs)

    return wrapper


class _TimedPipeline:
    """Mixed into a pipeline's class: its ``execute`` timed as the ``pipeline`` operation.

    A class rather than a wrapper stored on each pipeline: a wrapper holding the pipeline's bound
    ``execute`` made every pipeline a reference cycle, freed only by the cyclic collector (with
    1,000 chat turns open, about 2,000 pipelines and their command stacks waited for it).
    """

    _metrics: Metrics

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        execute = super().execute  # type: ignore[misc]
        return await _observed(execute, self._metrics, "redis", "pipeline", args, kwargs)


@functools.cache
def _timed_pipeline_class(cls: type[Any]) -> type[Any]:
    return type(f"Timed{cls.__name__}", (_TimedPipeline, cls), {"__module__": __name__})


def instrument_redis(client: aioredis.Redis, metrics: Metrics | None = None) -> aioredis.Redis:
    """Time every command (by name) and every pipeline (as ``pipeline``) of ``client``.

    One wrapper on the client's ``execute_command``, which every command method
    (scripts included) goes through, and each pipeline's ``execute`` (see :class:`_TimedPipeline`).
    Pub/sub connections are not timed: their reads wait for messages.
    """
    metrics = metrics if metrics is not None else Metrics()
    client.execute_command = _timed(client.execute_command, metrics, "redis")  # type: ignore[method-assign]
    make_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        # The client's own defaults: the cluster client's multi-key commands (DEL, UNLINK over
        # several slots) open pipeline() themselves and need its non-transactional default.
        pipe: Any = make_pipeline(*args, **kwargs)
        pipe.__class__ = _timed_pipeline_class(pipe.__class__)
        pipe._metrics = metrics
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]
    return client


#: The vector engine calls Daveloper makes (``daveloper.vectors.VectorEngine``; ``ping`` is the health probe's).
QDRANT_OPERATIONS = ("list_collections", "describe", "create_collection", "create_index", "drop_collection",
                     "upsert", "delete_points", "delete_where", "count", "scroll", "retrieve", "query_points")


def instrument_qdrant(client: T, metrics: Metrics | None = None) -> T:
    """Time the vector engine calls in :data:`QDRANT_OPERATIONS` on this engine instance."""
    metrics = metrics if metrics is not None else Metrics()
    for name in QDRANT_OPERATIONS:
        setattr(client, name, _timed(getattr(client, name), metrics, "qdrant", name))
    return client


def metrics_handler(metrics: Metrics, *, token: str | None = None) -> Handler:
    """``GET /metrics`` of ``metrics`` in the Prometheus text format; with ``token``, only for ``Bearer <token>``."""
    expected = f"Bearer {token}".encode() if token else None

    async def serve_metrics(request: web.Request) -> web.Response:
        if expected is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            return web.Response(status=401, text="GET /metrics needs the metrics bearer token\n",
                                headers={"WWW-Authenticate": "Bearer"})
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return serve_metrics


@contextlib.asynccontextmanager
async def open_metrics_server(addr: Address, metrics: Metrics, *,
                              token: str | None = None) -> AsyncIterator[Address]:
    """Serve ``GET /metrics`` alone on ``addr`` (for instances without an edge); yields the bound address."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(metrics, token=token))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, addr.host, addr.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else addr.port
        yield Address(addr.host, int(port))
    finally:
        await runner.cleanup()
