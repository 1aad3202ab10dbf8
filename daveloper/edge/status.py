"""The status a bridged call ends with, and the one table mapping it to Connect codes and HTTP.

A call ends with an :class:`RpcStatus`, whether the upstream server sent it
(``grpc-status``, ``grpc-message``, ``grpc-status-details-bin`` and trailers) or
the edge decided it (unknown method, bad JSON, deadline, ...). The WebSocket
``close`` frame and the HTTP/JSON routes render it the same way (see
:func:`daveloper.edge.codec.MessageCodec.connect_status`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpclib.const import Status

from daveloper.errors import DOMAIN

M = TypeVar("M", bound=Message)

__all__ = [
    "CONNECT_CODES",
    "HTTP_STATUS",
    "RpcStatus",
    "edge_status",
    "retry_delay",
    "status_reason",
]

#: gRPC status → Connect's lower_snake code name (note Connect's single-L ``canceled``).
CONNECT_CODES: Mapping[Status, str] = {
    Status.OK: "ok",
    Status.CANCELLED: "canceled",
    Status.UNKNOWN: "unknown",
    Status.INVALID_ARGUMENT: "invalid_argument",
    Status.DEADLINE_EXCEEDED: "deadline_exceeded",
    Status.NOT_FOUND: "not_found",
    Status.ALREADY_EXISTS: "already_exists",
    Status.PERMISSION_DENIED: "permission_denied",
    Status.RESOURCE_EXHAUSTED: "resource_exhausted",
    Status.FAILED_PRECONDITION: "failed_precondition",
    Status.ABORTED: "aborted",
    Status.OUT_OF_RANGE: "out_of_range",
    Status.UNIMPLEMENTED: "unimplemented",
    Status.INTERNAL: "internal",
    Status.UNAVAILABLE: "unavailable",
    Status.DATA_LOSS: "data_loss",
    Status.UNAUTHENTICATED: "unauthenticated",
}

#: gRPC status → HTTP status of an HTTP/JSON error (Connect's table).
HTTP_STATUS: Mapping[Status, int] = {
    Status.OK: 200,
    Status.CANCELLED: 499,
    Status.UNKNOWN: 500,
    Status.INVALID_ARGUMENT: 400,
    Status.DEADLINE_EXCEEDED: 504,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.PERMISSION_DENIED: 403,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.FAILED_PRECONDITION: 400,
    Status.ABORTED: 409,
    Status.OUT_OF_RANGE: 400,
    Status.UNIMPLEMENTED: 501,
    Status.INTERNAL: 500,
    Status.UNAVAILABLE: 503,
    Status.DATA_LOSS: 500,
    Status.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True, slots=True)
class RpcStatus:
    """How one call ended: code, message, ``google.rpc.Status`` details and trailing metadata."""

    code: Status
    message: str = ""
    #: The serialized ``google.rpc.Status`` (the ``grpc-status-details-bin`` value), if any.
    details: bytes = b""
    #: Trailing metadata as ``(key, value)`` pairs; ``-bin`` values are bytes.
    trailers: Sequence[tuple[str, str | bytes]] = field(default=())

    @property
    def ok(self) -> bool:
        return self.code is Status.OK


def edge_status(
    code: Status,
    message: str,
    *,
    reason: str,
    violations: Sequence[tuple[str, str]] = (),
    metadata: Mapping[str, str] | None = None,
) -> RpcStatus:
    """A status the edge itself decides, with the same details our servicers attach.

    ``ErrorInfo`` (domain ``daveloper``, a stable ``reason``) always, and
    ``BadRequest`` field violations when given, as in :mod:`daveloper.errors`.
    """
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))]
    if violations:
        Violation = error_details_pb2.BadRequest.FieldViolation
        details.append(error_details_pb2.BadRequest(
            field_violations=[Violation(field=f, description=d) for f, d in violations]
        ))
    packed = []
    for detail in details:
        container = any_pb2.Any()
        container.Pack(detail)
        packed.append(container)
    proto = status_pb2.Status(code=code.value, message=message, details=packed)
    return RpcStatus(code, message, proto.SerializeToString())


def _detail(status: RpcStatus, kind: type[M]) -> M | None:
    """The status's first ``google.rpc`` detail of type ``kind``, if it has one."""
    if not status.details:
        return None
    try:
        details = status_pb2.Status.FromString(status.details).details
    except DecodeError:
        return None
    for detail in details:
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def retry_delay(status: RpcStatus) -> float | None:
    """Seconds from the status's ``google.rpc.RetryInfo`` detail, if it has one."""
    info = _detail(status, error_details_pb2.RetryInfo)
    return None if info is None else float(info.retry_delay.ToTimedelta().total_seconds())


def status_reason(status: RpcStatus) -> str | None:
    """The ``reason`` of the status's ``google.rpc.ErrorInfo`` detail, if it has one."""
    info = _detail(status, error_details_pb2.ErrorInfo)
    return None if info is None else str(info.reason)
