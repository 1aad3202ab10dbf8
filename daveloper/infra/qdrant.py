"""The vector engine: Qdrant Edge in process under the data dir, or a configured Qdrant server.

With no ``DAVELOPER_QDRANT_URL``, vectors live in Qdrant Edge shards under
``<data_dir>/qdrant-edge`` (:class:`~daveloper.vectors.edge.EdgeEngine`); a
data dir from an earlier version (qdrant-client local mode under
``<data_dir>/qdrant``) is migrated on the first start. With a URL, a
qdrant-client ``AsyncQdrantClient`` talks to the server
(:class:`~daveloper.vectors.remote.RemoteEngine`); qdrant-client is imported
only then, so the embedded default starts without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable
from daveloper.infra import TimedProbe, redacted_url
from daveloper.metrics import Metrics, instrument_qdrant
from daveloper.vectors.edge import EdgeEngine
from daveloper.vectors.migrate import migrate_local_mode
from daveloper.vectors.model import VectorEngine

__all__ = ["EDGE_DIR", "open_qdrant", "qdrant_probe"]

log = logging.getLogger(__name__)

#: Seconds for the start-up check against a Qdrant server.
CONNECT_TIMEOUT = 5.0
#: Seconds qdrant-client waits for a REST reply (its default, 5, is short for large upserts).
REQUEST_TIMEOUT = 30
#: The Edge engine's directory under the data dir.
EDGE_DIR = "qdrant-edge"


@asynccontextmanager
async def open_qdrant(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[VectorEngine]:
    """Yield the vector engine for ``settings``: a server's for ``qdrant_url``, else Qdrant Edge on ``data_dir``.

    A server that does not answer raises :class:`~daveloper.errors.Unavailable`,
    one that rejects the API key :class:`~daveloper.errors.ConfigError`; an
    Edge store another process has open raises ``ConfigError``. The engine is
    closed (Edge: flushed) on exit.
    """
    engine: VectorEngine
    if settings.qdrant_url:
        engine = await _connect(settings.qdrant_url, settings.qdrant_api_key)
    else:
        engine = EdgeEngine.open(settings.data_dir / EDGE_DIR)
    try:
        if isinstance(engine, EdgeEngine):
            # Start the engine process now: the first health check and search must not pay for it.
            await engine.ping()
            await migrate_local_mode(settings.data_dir / "qdrant", engine)
        yield instrument_qdrant(engine, metrics)
    finally:
        await engine.close()


async def _connect(url: str, api_key: str | None) -> VectorEngine:
    from qdrant_client import AsyncQdrantClient
    from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

    from daveloper.vectors.remote import RemoteEngine

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
    return RemoteEngine(client)


def qdrant_probe(engine: VectorEngine, *, name: str = "qdrant", timeout: float = 1.0) -> TimedProbe:
    """Health probe for the vector engine: a round trip within ``timeout``.

    For Edge the round trip goes to the engine process and back.
    """
    return TimedProbe(name, engine.ping, timeout=timeout)
