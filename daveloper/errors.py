"""Daveloper's exceptions, and their one mapping to gRPC status.

Exception tree::

    DaveloperError                 base; carries a gRPC status and a stable reason
    ├── ConfigError                invalid settings (raised at start-up, never over RPC)
    ├── InvalidArgument            INVALID_ARGUMENT + google.rpc.BadRequest field violations
    ├── Unauthenticated            UNAUTHENTICATED
    ├── PermissionDenied           PERMISSION_DENIED
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION
    │   └── CursorExpired          reason CURSOR_EXPIRED: an event-log cursor fell out of retention
    ├── ResourceExhausted          RESOURCE_EXHAUSTED + google.rpc.RetryInfo when a retry may succeed
    ├── Cancelled                  CANCELLED: the work was cancelled on request
    ├── Unavailable                UNAVAILABLE (a dependency is down) + RetryInfo
    └── Internal                   INTERNAL

Handlers raise these; :func:`to_grpc_error` turns any exception into a
``GRPCError`` with ``google.rpc`` details (ErrorInfo always), :func:`to_failure`
into the ``Failure`` message that stream events carry, and :func:`failure_error`
turns such a ``Failure`` back into the RPC error.
Adapters translate foreign errors (Redis, Qdrant, HTTP) into this tree at their
boundary with ``raise ... from exc``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

if TYPE_CHECKING:  # the generated package is ~20 MiB of imports the vector engine's process never needs
    from generated.daveloper.v1 import Failure

__all__ = [
    "DOMAIN",
    "AlreadyExists",
    "Cancelled",
    "ConfigError",
    "CursorExpired",
    "DaveloperError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "failure_error",
    "register_translation",
    "to_failure",
    "to_grpc_error",
    "translated",
]

#: ``google.rpc.ErrorInfo.domain`` of every error Daveloper raises.
DOMAIN = "daveloper"


class DaveloperError(Exception):
    """Base of every error Daveloper raises on purpose.

    ``reason`` is stable and machine readable (UPPER_SNAKE_CASE); ``message`` is
    for humans; ``metadata`` adds structured context to the ErrorInfo detail.
    """

    status: Status = Status.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[object]:
        """``google.rpc`` detail messages for this error (google protobuf, not betterproto)."""
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)]


class ConfigError(DaveloperError):
    """Settings that cannot work; raised at start-up."""

    status = Status.FAILED_PRECONDITION
    default_reason = "INVALID_CONFIG"


class InvalidArgument(DaveloperError):
    """The request is malformed; ``violations`` maps field paths to what is wrong."""

    status = Status.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        pairs = violations.items() if isinstance(violations, Mapping) else violations
        self.violations: list[tuple[str, str]] = list(pairs)

    @classmethod
    def field(cls, field: str, problem: str) -> InvalidArgument:
        """One bad field: ``InvalidArgument.field("text", "must not be empty")``."""
        return cls(f"{field}: {problem}", violations=[(field, problem)])

    def details(self) -> list[object]:
        details = super().details()
        if self.violations:
            Violation = error_details_pb2.BadRequest.FieldViolation
            details.append(error_details_pb2.BadRequest(
                field_violations=[Violation(field=f, description=d) for f, d in self.violations]
            ))
        return details


class Unauthenticated(DaveloperError):
    status = Status.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DaveloperError):
    status = Status.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(DaveloperError):
    status = Status.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DaveloperError):
    status = Status.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DaveloperError):
    status = Status.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class CursorExpired(FailedPrecondition):
    """A resume cursor (``after_seq``) points before the oldest retained event."""

    default_reason = "CURSOR_EXPIRED"


class _Retryable(DaveloperError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after

    def details(self) -> list[object]:
        details = super().details()
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(datetime.timedelta(seconds=self.retry_after))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return details


class ResourceExhausted(_Retryable):
    """A limit was hit (message size, rate, quota)."""

    status = Status.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(_Retryable):
    """A dependency (Redis, Qdrant, an upstream API) cannot be reached right now."""

    status = Status.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Cancelled(DaveloperError):
    """Work stopped because someone asked it to."""

    status = Status.CANCELLED
    default_reason = "CANCELLED"


class Internal(DaveloperError):
    status = Status.INTERNAL
    default_reason = "INTERNAL"


_TRANSLATIONS: list[tuple[tuple[type[BaseException], ...], Callable[[BaseException], DaveloperError]]] = []


def register_translation(kinds: tuple[type[BaseException], ...],
                         translate: Callable[[BaseException], DaveloperError]) -> None:
    """Make a client library's errors of ``kinds`` become ``translate(exc)`` wherever they escape.

    Adapters translate at their boundary where they can; this is the net for the
    calls they don't wrap, e.g. "Redis is unreachable" raised from any call site
    becomes UNAVAILABLE instead of INTERNAL.
    """
    _TRANSLATIONS.append((kinds, translate))


def translated(exc: BaseException) -> BaseException:
    """``exc`` as one of our errors if a registered translation covers it, else ``exc`` itself."""
    if not isinstance(exc, DaveloperError):
        for kinds, translate in _TRANSLATIONS:
            if isinstance(exc, kinds):
                return translate(exc)
    return exc


def to_grpc_error(exc: BaseException, *, request_id: str = "") -> GRPCError:
    """The ``GRPCError`` a handler's exception becomes on the wire.

    Unexpected exceptions become INTERNAL with no detail of the exception text
    (it may leak internals); the request id lets an operator find the traceback.
    """
    if isinstance(exc, GRPCError):
        return exc
    exc = translated(exc)
    if not isinstance(exc, DaveloperError):
        suffix = f" (request id {request_id})" if request_id else ""
        exc = Internal(f"internal error{suffix}", metadata={"request_id": request_id} if request_id else None)
    return GRPCError(exc.status, exc.message, exc.details())


def to_failure(exc: BaseException, *, request_id: str = "") -> Failure:
    """The ``Failure`` a stream event carries for ``exc`` (same status as the RPC error would be)."""
    from generated.daveloper.v1 import Failure

    exc = translated(exc)
    error = to_grpc_error(exc, request_id=request_id)
    source = exc if isinstance(exc, DaveloperError) else None
    retry = getattr(source, "retry_after", None)
    return Failure(
        code=error.status.value,
        message=error.message or error.status.name,
        reason=source.reason if source else error.status.name,
        metadata=dict(source.metadata) if source else {},
        retry_delay=datetime.timedelta(seconds=retry) if retry is not None else None,
    )


def failure_error(failure: Failure) -> GRPCError:
    """The RPC error equivalent of a stream event's ``Failure`` (the inverse of :func:`to_failure`)."""
    details: list[object] = [
        error_details_pb2.ErrorInfo(reason=failure.reason, domain=DOMAIN, metadata=failure.metadata)
    ]
    if failure.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(failure.retry_delay)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    try:
        status = Status(failure.code)
    except ValueError:
        status = Status.UNKNOWN
    return GRPCError(status, failure.message, details)
