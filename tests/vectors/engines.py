"""The ``engine`` fixture: every vector-store test runs against both implementations.

* ``edge``: :class:`~daveloper.vectors.edge.EdgeEngine`, Qdrant Edge in its engine process (the embedded default);
* ``qdrant-client``: :class:`~daveloper.vectors.remote.RemoteEngine`, the implementation used for
  ``DAVELOPER_QDRANT_URL``. No Qdrant server binary can run here, so it drives qdrant-client's
  local mode (``AsyncQdrantClient(path=...)``), which offers the identical client API a server
  does; what differs on a server (HTTP errors, payload indexes in use) is translated or invisible
  at this interface.

Import it into a test module with ``from tests.vectors.engines import engine_fixture``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from daveloper.vectors import VectorEngine
from daveloper.vectors.edge import EdgeEngine
from daveloper.vectors.remote import RemoteEngine

__all__ = ["engine_fixture", "open_engine"]


def open_engine(kind: str, path: Path) -> VectorEngine:
    """A fresh engine of ``kind`` (``"edge"`` or ``"qdrant-client"``) storing under ``path``."""
    if kind == "edge":
        return EdgeEngine.open(path / "qdrant-edge")
    return RemoteEngine(AsyncQdrantClient(path=str(path / "qdrant")))


@pytest.fixture(params=["edge", "qdrant-client"], name="engine")
async def engine_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorEngine]:
    """A vector engine on a fresh directory, once per implementation."""
    opened = open_engine(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
