"""Small helpers for calling the servicers over real gRPC in tests."""

from __future__ import annotations

from google.rpc import error_details_pb2
from grpclib.exceptions import GRPCError


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def reason(error: GRPCError) -> str:
    """The ErrorInfo reason of an RPC error."""
    return next(d.reason for d in error.details or () if isinstance(d, error_details_pb2.ErrorInfo))


def retry_seconds(error: GRPCError) -> float | None:
    """The RetryInfo delay of an RPC error, if it has one."""
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.RetryInfo):
            return detail.retry_delay.ToTimedelta().total_seconds()
    return None


def violations(error: GRPCError) -> dict[str, str]:
    """The BadRequest field violations of an RPC error."""
    return {v.field: v.description for d in error.details or () if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations}
