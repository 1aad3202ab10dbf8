"""The Qdrant client: a configured server, or qdrant-client local mode under the data dir.

Local mode keeps every collection in memory and in SQLite files under
``<data_dir>/qdrant``; it is synchronous work behind an async facade (loading
at open and each query run on the event loop), fine for the single-machine
sizes it is meant for. Past that, set ``DAVELOPER_QDRANT_URL``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from daveloper.config import Settings
from daveloper.errors import AlreadyExists, ConfigError, Internal, NotFound, Unavailable
from daveloper.infra import TimedProbe, redacted_url
from daveloper.metrics import Metrics, instrument_qdrant

__all__ = ["open_qdrant", "qdrant_errors", "qdrant_probe"]

log = logging.getLogger(__name__)

#: Seconds for the start-up check against a Qdrant server.
CONNECT_TIMEOUT = 5.0
#: Seconds qdrant-client waits for a REST reply (its default, 5, is short for large upserts).
REQUEST_TIMEOUT = 30


@asynccontextmanager
async def open_qdrant(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[AsyncQdrantClient]:
    """Yield a client for ``settings.qdrant_url``, or a local-mode one on ``data_dir/qdrant``.

    A server that does not answer raises :class:`~daveloper.errors.Unavailable`,
    one that rejects the API key :class:`~daveloper.errors.ConfigError`; a local
    store another process has open raises ``ConfigError``. The client is closed on exit.
    """
    if settings.qdrant_url:
        client = await _connect(settings.qdrant_url, settings.qdrant_api_key)
    else:
        client = _open_local(settings.data_dir / "qdrant")
    try:
        yield instrument_qdrant(client, metrics)
    finally:
        await client.close()


async def _connect(url: str, api_key: str | None) -> AsyncQdrantClient:
    # check_compatibility would fetch the server version from a background
    # thread and only warn; the listing below fails loudly instead, and also
    # proves the API key.
    shown = redacted_url(url)
    try:
        client = AsyncQdrantClient(url=url, api_key=api_key, timeout=REQUEST_TIMEOUT, check_compatibility=False)
    except ValueError as exc:  # e.g. an unknown scheme
        raise ConfigError(f"invalid Qdrant URL {shown}: {exc}") from exc
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await client.get_collections()
    except BaseException as exc:
        await client.close()  # whatever happened, cancellation included
        if isinstance(exc, UnexpectedResponse):
            if exc.status_code in (401, 403):
                raise ConfigError(f"Qdrant at {shown} rejected the API key (HTTP {exc.status_code})") from exc
            raise Unavailable(f"Qdrant at {shown} answered HTTP {exc.status_code}", retry_after=1.0) from exc
        if isinstance(exc, ApiException | OSError | TimeoutError):  # qdrant-client wraps httpx errors
            raise Unavailable(
                f"Qdrant at {shown} does not answer: {exc or type(exc).__name__}", retry_after=1.0
            ) from exc
        raise
    log.info("connected to Qdrant at %s", shown)
    return client


def _open_local(path: Path) -> AsyncQdrantClient:
    path.mkdir(parents=True, exist_ok=True)
    # Local mode holds an exclusive flock on <path>/.lock for the client's
    # lifetime, but takes it only after loading every collection, and then
    # fails with a bare RuntimeError that leaks what it loaded. Probe the same
    # lock first to fail early and clearly. (Two processes starting at the very
    # same moment can still get qdrant-client's own error.)
    with open(path / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"Qdrant local storage {path} is in use by another process; give each Daveloper "
                "process its own data dir, or share a Qdrant server with DAVELOPER_QDRANT_URL"
            ) from None
        fcntl.flock(lock, fcntl.LOCK_UN)
    return AsyncQdrantClient(path=str(path))


def qdrant_probe(client: AsyncQdrantClient, *, name: str = "qdrant", timeout: float = 1.0) -> TimedProbe:
    """Health probe for Qdrant: a collection listing within ``timeout``."""
    return TimedProbe(name, client.get_collections, timeout=timeout)


@contextmanager
def qdrant_errors(what: str) -> Iterator[None]:
    """Translate qdrant-client exceptions raised inside the block into Daveloper's error tree.

    A server answers with HTTP statuses; local mode raises ``ValueError`` with
    a message, which is matched for the two cases callers act on (missing and
    existing collections). Anything else is a bug on our side and stays as is.
    """
    try:
        yield
    except UnexpectedResponse as exc:
        status = exc.status_code or 0
        body = exc.content.decode(errors="replace")[:200]
        if status == 404:
            raise NotFound(f"{what}: not found", reason="COLLECTION_NOT_FOUND") from exc
        if status == 409 or (status == 400 and "already exists" in body):
            raise AlreadyExists(f"{what}: already exists", reason="COLLECTION_EXISTS") from exc
        if status == 429 or status >= 500:
            raise Unavailable(f"{what}: Qdrant answered HTTP {status}", retry_after=1.0) from exc
        raise Internal(f"{what}: Qdrant refused the request (HTTP {status}): {body}") from exc
    except (ApiException, OSError, TimeoutError) as exc:
        raise Unavailable(f"{what}: Qdrant does not answer: {exc or type(exc).__name__}", retry_after=1.0) from exc
    except ValueError as exc:
        message = str(exc)
        if message.startswith("Collection ") and message.endswith(" not found"):
            raise NotFound(f"{what}: not found", reason="COLLECTION_NOT_FOUND") from exc
        if message.startswith("Collection ") and message.endswith(" already exists"):
            raise AlreadyExists(f"{what}: already exists", reason="COLLECTION_EXISTS") from exc
        raise
