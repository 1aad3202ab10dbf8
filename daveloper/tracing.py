"""Tracing with OpenTelemetry: spans from the edge through the servicers to Redis, Qdrant, the model and HTTP.

Daveloper calls only the OpenTelemetry API. Spans are recorded once a provider
is in use: :func:`configure_tracing` installs the SDK with an OTLP/HTTP exporter
when ``otel_enabled`` is set (the ``tracing`` extra); tests install their own
with :func:`use_provider`. Off (the default), every helper returns at once.

W3C trace context (``traceparent``, ``tracestate``) travels in gRPC metadata:
:func:`server_span` continues the caller's trace and :func:`inject` hands the
current span on upstream. Spans other than server spans start only inside a
trace, so background work that no call started makes none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider

from daveloper import __version__
from daveloper.errors import ConfigError

if TYPE_CHECKING:
    from daveloper.config import Settings

__all__ = ["configure_tracing", "enabled", "inject", "server_span", "set_status", "span", "use_provider"]


class _State:
    tracer: Tracer | None = None


# The one provider Daveloper records with; unlike OpenTelemetry's global one it can be replaced (tests).
_STATE = _State()


def use_provider(provider: TracerProvider | None) -> None:
    """Record Daveloper's spans with ``provider`` (``None``: record none)."""
    _STATE.tracer = None if provider is None else provider.get_tracer("daveloper", __version__)


def enabled() -> bool:
    return _STATE.tracer is not None


def configure_tracing(settings: Settings) -> Callable[[], None] | None:
    """With ``settings.otel_enabled``, export spans over OTLP/HTTP; returns the function that flushes and stops.

    The exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables and the
    sampler ``OTEL_TRACES_SAMPLER``; ``OTEL_SDK_DISABLED=true`` records nothing.
    """
    if not settings.otel_enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError("DAVELOPER_OTEL_ENABLED needs the OpenTelemetry SDK and OTLP exporter: "
                          "pip install 'daveloper[tracing]'") from exc
    provider = SdkTracerProvider(resource=Resource.create({
        "service.name": "daveloper", "service.version": __version__, "service.instance.id": settings.instance_id,
    }))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)

    def stop() -> None:
        use_provider(None)
        provider.shutdown()

    return stop


def _carrier(metadata: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata or ()
    fields = propagate.get_global_textmap().fields
    return {k.lower(): v for k, v in pairs if isinstance(v, str) and k.lower() in fields}


@contextlib.contextmanager
def server_span(name: str, metadata: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
                **attributes: Any) -> Iterator[Span | None]:
    """A SERVER span continuing the trace in ``metadata`` (gRPC metadata, HTTP headers); ``None`` when off."""
    tracer = _STATE.tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, context=propagate.extract(_carrier(metadata)), kind=SpanKind.SERVER,
                                      attributes=attributes) as current:
        yield current


@contextlib.contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Span | None]:
    """A span under the current one (``None`` when off or outside a trace)."""
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


#: gRPC codes that mark a server span as failed (OpenTelemetry's RPC conventions): the server's
#: faults, not the caller's (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ... are answers).
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
# UNAVAILABLE, DATA_LOSS


def set_status(current: Span | None, code_name: str, code_value: int) -> None:
    """Record a call's gRPC status on its span; a server-side failure marks it an error."""
    if current is None:
        return
    current.set_attribute("rpc.grpc.status_code", code_value)
    if code_value in _SERVER_ERRORS:
        current.set_status(StatusCode.ERROR, code_name)


def inject(metadata: list[tuple[str, str | bytes]]) -> None:
    """Put the current span's trace context in ``metadata``, replacing the caller's (nothing when off)."""
    if _STATE.tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata[:] = [(k, v) for k, v in metadata if k not in carrier and k not in ("traceparent", "tracestate")]
    metadata.extend(carrier.items())
