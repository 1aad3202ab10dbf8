"""The one place where JSON meets protobuf at the edge.

Messages travel through the edge as protobuf bytes; only the JSON subprotocol
and the HTTP/JSON routes convert them, here, with the proto3 canonical JSON
mapping (``google.protobuf.json_format``: lowerCamelCase names, 64-bit integers
as strings, enums by name) on message classes built from the descriptor pool.
betterproto2 is never involved: it is ~100x slower per message and deviates
from the canonical mapping in places.

Parsing ignores unknown fields (as Connect does) so that clients built against
a newer schema keep working; a value of the wrong type is an error.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpclib.const import Cardinality
from grpclib.health.v1 import health_pb2
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from daveloper.descriptors import DESCRIPTOR_SET
from daveloper.edge.status import CONNECT_CODES, RpcStatus

__all__ = ["InvalidMessage", "MessageCodec", "Method", "UnrepresentableMessage", "b64decode", "b64encode"]

#: Error detail types whose content is safe to show to clients as ``debug`` JSON.
#: ``google.rpc.DebugInfo`` (stack traces) is deliberately absent.
_PUBLIC_DETAILS: Mapping[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure, error_details_pb2.PreconditionFailure,
        error_details_pb2.ResourceInfo, error_details_pb2.Help, error_details_pb2.LocalizedMessage,
    )
}


class InvalidMessage(ValueError):
    """A message value does not fit its protobuf type (bad JSON shape, bad bytes)."""


class UnrepresentableMessage(InvalidMessage):
    """A valid protobuf message (a response) that the JSON mapping cannot express (NaN, a year past 9999)."""


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC the edge can carry."""

    #: ``/package.Service/Method``
    path: str
    cardinality: Cardinality
    input: type[Message]
    output: type[Message]
    #: Declared ``idempotency_level`` NO_SIDE_EFFECTS or IDEMPOTENT: safe to send again after UNAVAILABLE.
    idempotent: bool = False


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (the ProtoJSON form of ``bytes``)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage(f"invalid base64: {exc}") from None


def _served_files(pool: descriptor_pool.DescriptorPool) -> Iterator[FileDescriptor]:
    """Every file of :func:`daveloper.descriptors.load_descriptor_pool` (a pool cannot list its files)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("generated").joinpath(DESCRIPTOR_SET).read_bytes()
    )
    names = [f.name for f in files.file]
    names += [m.DESCRIPTOR.name for m in (health_pb2, reflection_pb2, reflection_v1alpha_pb2)]
    for name in names:
        yield pool.FindFileByName(name)


def _cardinality(method: MethodDescriptor) -> Cardinality:
    client, server = method.client_streaming, method.server_streaming
    if client:
        return Cardinality.STREAM_STREAM if server else Cardinality.STREAM_UNARY
    return Cardinality.UNARY_STREAM if server else Cardinality.UNARY_UNARY


class MessageCodec:
    """Method registry and JSON ⇄ protobuf conversion for every service in a descriptor pool."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        self.methods: dict[str, Method] = {}
        for file in _served_files(pool):
            for service in file.services_by_name.values():
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    level = method.GetOptions().idempotency_level
                    self.methods[path] = Method(
                        path, _cardinality(method),
                        message_factory.GetMessageClass(method.input_type),
                        message_factory.GetMessageClass(method.output_type),
                        idempotent=level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN,
                    )

    def to_bytes(self, cls: type[Message], value: object) -> bytes:
        """Parse a ProtoJSON value (already ``json.loads``-ed) into protobuf bytes."""
        if not isinstance(value, dict):
            raise InvalidMessage(f"a {cls.DESCRIPTOR.full_name} must be a JSON object")
        message = cls()
        try:
            json_format.ParseDict(value, message, ignore_unknown_fields=True, descriptor_pool=self._pool)
        except (json_format.ParseError, ValueError, TypeError, RecursionError, OverflowError) as exc:
            raise InvalidMessage(str(exc) or type(exc).__name__) from None
        return message.SerializeToString()

    def to_json(self, cls: type[Message], data: bytes) -> dict[str, Any]:
        """Protobuf bytes as a ProtoJSON object (default values omitted)."""
        try:
            message = cls.FromString(data)
        except DecodeError as exc:
            raise InvalidMessage(f"not a valid {cls.DESCRIPTOR.full_name}: {exc}") from None
        try:
            result: dict[str, Any] = json_format.MessageToDict(message, descriptor_pool=self._pool)
        except (json_format.Error, ValueError) as exc:  # valid protobuf JSON cannot express (NaN, year 10000)
            raise UnrepresentableMessage(f"a {cls.DESCRIPTOR.full_name} that JSON cannot express: {exc}") from None
        return result

    def check_bytes(self, cls: type[Message], data: bytes) -> None:
        """Raise :class:`InvalidMessage` unless ``data`` parses as ``cls`` (binary subprotocol input)."""
        try:
            cls.FromString(data)
        except DecodeError as exc:
            raise InvalidMessage(f"not a valid {cls.DESCRIPTOR.full_name}: {exc}") from None

    def connect_status(self, status: RpcStatus) -> dict[str, Any]:
        """The Connect error JSON of a status: ``{"code", "message"?, "details"?}`` (``{"code":"ok"}`` on success).

        Details come from the ``google.rpc.Status`` the upstream sent; each is
        ``{"type", "value" (unpadded base64 of the detail message), "debug"?}``,
        with ``debug`` (ProtoJSON) only for the public ``google.rpc`` detail types.
        """
        result: dict[str, Any] = {"code": CONNECT_CODES.get(status.code, "unknown")}
        if status.message:
            result["message"] = status.message
        if status.details:
            try:
                proto = status_pb2.Status.FromString(status.details)
            except DecodeError:
                proto = status_pb2.Status()  # a peer sent garbage details: report the code alone
            details = []
            for detail in proto.details:
                type_name = detail.type_url.rsplit("/", 1)[-1]
                entry: dict[str, Any] = {
                    "type": type_name,
                    "value": base64.b64encode(detail.value).decode("ascii").rstrip("="),
                }
                if (cls := _PUBLIC_DETAILS.get(type_name)) is not None:
                    # debug is optional by definition; a bad value still goes out without it
                    with contextlib.suppress(DecodeError):
                        entry["debug"] = json_format.MessageToDict(cls.FromString(detail.value))
                details.append(entry)
            if details:
                result["details"] = details
        return result
