"""The one mapping from exceptions to gRPC status and google.rpc details."""

import datetime

from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.errors import (
    CursorExpired,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    failure_error,
    to_failure,
    to_grpc_error,
)


def test_cursor_expired_is_failed_precondition_with_reason() -> None:
    error = to_grpc_error(CursorExpired("too old", metadata={"first_seq": "10"}))
    assert error.status is Status.FAILED_PRECONDITION
    (info,) = error.details
    assert (info.reason, info.domain, dict(info.metadata)) == ("CURSOR_EXPIRED", "daveloper", {"first_seq": "10"})


def test_resource_exhausted_carries_retry_info() -> None:
    error = to_grpc_error(ResourceExhausted("slow down", retry_after=1.5))
    retry = next(d for d in error.details if isinstance(d, error_details_pb2.RetryInfo))
    assert retry.retry_delay.ToTimedelta() == datetime.timedelta(seconds=1.5)


def test_invalid_argument_lists_every_violation() -> None:
    error = to_grpc_error(InvalidArgument("bad", violations={"a": "x", "b.c": "y"}))
    bad = next(d for d in error.details if isinstance(d, error_details_pb2.BadRequest))
    assert [(v.field, v.description) for v in bad.field_violations] == [("a", "x"), ("b.c", "y")]


def test_unexpected_exception_hides_its_text() -> None:
    error = to_grpc_error(KeyError("password=hunter2"), request_id="r1")
    assert error.status is Status.INTERNAL
    assert "hunter2" not in error.message
    assert "r1" in error.message


def test_grpc_error_passes_through() -> None:
    original = GRPCError(Status.UNIMPLEMENTED, "nope")
    assert to_grpc_error(original) is original


def test_failure_mirrors_the_status() -> None:
    failure = to_failure(Unavailable("redis down", retry_after=2, reason="REDIS_DOWN"))
    assert (failure.code, failure.reason, failure.message) == (Status.UNAVAILABLE.value, "REDIS_DOWN", "redis down")
    assert failure.retry_delay == datetime.timedelta(seconds=2)
    plain = to_failure(NotFound("gone"))
    assert (plain.code, plain.reason, plain.retry_delay) == (Status.NOT_FOUND.value, "NOT_FOUND", None)
    internal = to_failure(RuntimeError("x"))
    assert (internal.code, internal.reason) == (Status.INTERNAL.value, "INTERNAL")


def test_failure_round_trips_to_the_same_rpc_error() -> None:
    original = ResourceExhausted("too big", reason="UPLOAD_TOO_LARGE", metadata={"limit": "5"}, retry_after=3)
    error = failure_error(to_failure(original))
    assert (error.status, error.message) == (Status.RESOURCE_EXHAUSTED, "too big")
    info = next(d for d in error.details if isinstance(d, error_details_pb2.ErrorInfo))
    assert (info.reason, dict(info.metadata)) == ("UPLOAD_TOO_LARGE", {"limit": "5"})
    retry = next(d for d in error.details if isinstance(d, error_details_pb2.RetryInfo))
    assert retry.retry_delay.ToTimedelta() == datetime.timedelta(seconds=3)
