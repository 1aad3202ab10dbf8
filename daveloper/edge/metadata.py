"""Metadata crossing the edge: what clients may send upstream, and how upstream metadata is shown.

Client metadata is an object of lowercase keys to a string or a list of
strings; ``-bin`` keys carry base64. The edge drops what a client must not set:
``grpc-*`` and ``:``-pseudo headers (the edge and grpclib own them),
``authorization`` (the token comes from the handshake or the HTTP header, so one
socket cannot act for another session), hop-by-hop and transport headers, and
identity headers (``x-daveloper-*``, ``x-user-id``, ``x-session-id``,
``x-forwarded-*``, ``x-real-ip``) that something downstream might trust.
Everything else (``x-request-id``, ``traceparent``, ...) passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from daveloper.edge.codec import InvalidMessage, b64decode, b64encode

__all__ = ["InvalidMetadata", "MetadataTooLarge", "expose", "sanitize"]

_KEY = re.compile(r"[0-9a-z_.\-]+")
_VALUE = re.compile(r"[ -~]*")  # printable ASCII, as gRPC requires
_DROPPED_EXACT = frozenset({
    "authorization", "cookie", "set-cookie", "host", "te", "trailer", "transfer-encoding", "upgrade",
    "connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
    "content-type", "content-length", "content-encoding", "user-agent", "x-user-id", "x-session-id",
    "x-real-ip", "forwarded", "via",
})
_DROPPED_PREFIXES = ("grpc-", ":", "x-daveloper-", "x-forwarded-", "sec-websocket-", "connect-")


class InvalidMetadata(ValueError):
    """Metadata that is not an object of valid keys to printable strings."""


class MetadataTooLarge(ValueError):
    """Metadata larger than the configured limit."""


def _kept(key: str) -> bool:
    return key not in _DROPPED_EXACT and not key.startswith(_DROPPED_PREFIXES)


def sanitize(raw: object, *, max_bytes: int) -> list[tuple[str, str | bytes]]:
    """Client metadata as grpclib ``(key, value)`` pairs, with forbidden keys dropped.

    Raises :class:`MetadataTooLarge` when keys and values together exceed
    ``max_bytes`` (counted before dropping, so the work done is bounded), and
    :class:`InvalidMetadata` for anything malformed.
    """
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InvalidMetadata("metadata must be an object of key to list of strings")
    size = 0
    pairs: list[tuple[str, str | bytes]] = []
    for name, given in raw.items():
        values = [given] if isinstance(given, str) else given
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidMetadata(f"metadata {name!r}: values must be strings")
        size += sum(len(name) + len(v) for v in values) if values else len(name)
        if size > max_bytes:
            raise MetadataTooLarge(f"metadata exceeds {max_bytes} bytes")
        key = name.lower()
        if not _kept(key):
            continue
        if not _KEY.fullmatch(key):
            raise InvalidMetadata(f"metadata key {name!r} is not a valid gRPC header name")
        for value in values:
            if key.endswith("-bin"):
                try:
                    pairs.append((key, b64decode(value)))
                except InvalidMessage:
                    raise InvalidMetadata(f"metadata {key!r}: invalid base64") from None
            elif not _VALUE.fullmatch(value):
                raise InvalidMetadata(f"metadata {key!r}: values must be printable ASCII")
            else:
                pairs.append((key, value))
    return pairs


def sanitize_http(headers: Mapping[str, str]) -> list[tuple[str, str | bytes]]:
    """The HTTP request headers forwarded upstream: ``x-*`` extensions and trace context only."""
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in headers.items():
        key = name.lower()
        if not (key.startswith("x-") or key in ("traceparent", "tracestate", "baggage")):
            continue
        if not _kept(key) or not _KEY.fullmatch(key) or key.endswith("-bin") or not _VALUE.fullmatch(value):
            continue
        pairs.append((key, value))
    return pairs


def expose(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, list[str]]:
    """Upstream metadata as JSON: key → list of strings; ``-bin`` values as unpadded base64."""
    result: dict[str, list[str]] = {}
    for key, value in metadata or ():
        text = b64encode(value).rstrip("=") if isinstance(value, bytes) else str(value)
        result.setdefault(key, []).append(text)
    return result
