"""Adapters for the infrastructure Daveloper runs on: Redis/Valkey and Qdrant.

Each ``open_*`` function is an async context manager that yields a connected
client (starting an embedded engine when no URL is configured) and closes what
it opened in reverse order. Each engine also has a :class:`HealthProbe`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["HealthProbe", "TimedProbe", "redacted_url"]

log = logging.getLogger(__name__)


class HealthProbe(Protocol):
    """A dependency's liveness check, as a health service or readiness endpoint polls it."""

    #: Short stable name, e.g. ``"redis"``.
    name: str

    async def check(self) -> bool:
        """True when the dependency answers within a short timeout.

        Never raises, except ``CancelledError``: a probe reports, it does not fail.
        """
        ...


class TimedProbe:
    """A :class:`HealthProbe` that is healthy when ``request()`` completes within ``timeout``."""

    def __init__(self, name: str, request: Callable[[], Awaitable[Any]], *, timeout: float = 1.0) -> None:
        self.name = name
        self._request = request
        self._timeout = timeout

    async def check(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._request()
        except Exception as exc:  # a probe reports failure, whatever it is; CancelledError passes
            log.debug("%s health check failed: %r", self.name, exc)
            return False
        return True


def redacted_url(url: str) -> str:
    """``url`` with any password (in the userinfo or a ``password`` query parameter) shown as ``***``.

    For messages and logs: a URL from the settings may carry credentials.
    """
    parts = urlsplit(url)
    secret = ("password", "api_key", "api-key")
    pairs = parse_qsl(parts.query)
    if parts.password is None and not any(k.lower() in secret for k, _ in pairs):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    pairs = [(k, "***" if k.lower() in secret else v) for k, v in pairs]
    query = f"?{urlencode(pairs, safe='*')}" if pairs else ""
    # Not urlunsplit: it turns "unix:///path" into "unix:/path".
    return f"{parts.scheme}://{netloc}{parts.path}{query}"
