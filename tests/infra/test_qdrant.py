"""open_qdrant and qdrant_probe: Qdrant Edge on disk (the default), a configured server, and one that is not there."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable
from daveloper.infra.qdrant import EDGE_DIR, open_qdrant, qdrant_probe
from daveloper.vectors import CollectionSpec, DenseParams, Nearest, PointData, PointQuery
from daveloper.vectors.edge import EdgeEngine

POINTS = [
    PointData(1, {"": [1.0, 0.0, 0.0, 0.0]}, {"text": "alpha"}),
    PointData(2, {"": [0.0, 1.0, 0.0, 0.0]}, {"text": "beta"}),
]


async def nearest_text(settings: Settings) -> str:
    async with open_qdrant(settings) as engine:
        hits = await engine.query_points("docs", PointQuery((Nearest("", (0.1, 0.9, 0.0, 0.0)),), limit=1))
        return str(hits[0].payload["text"])


async def test_edge_stores_on_disk_and_survives_reopen(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    async with open_qdrant(settings) as engine:
        assert isinstance(engine, EdgeEngine)
        await engine.create_collection("docs", CollectionSpec(dense={"": DenseParams(4)}))
        await engine.upsert("docs", POINTS)
    assert (data_dir / EDGE_DIR / "docs" / "edge_config.json").is_file()
    assert not (data_dir / "qdrant").exists()  # nothing of local mode is created any more
    assert await nearest_text(settings) == "beta"


async def test_edge_store_held_by_another_process_is_a_config_error(data_dir: Path) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys, pathlib; from daveloper.vectors.edge import EdgeEngine; "
        "e = EdgeEngine.open(pathlib.Path(sys.argv[1])); print('open', flush=True); sys.stdin.read()",
        str(data_dir / EDGE_DIR),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await holder.stdout.readline() == b"open\n"
        with pytest.raises(ConfigError, match="in use by another process"):
            async with open_qdrant(Settings(data_dir=data_dir)):
                pytest.fail("opened an Edge store another process holds")
    finally:
        holder.stdin.close()  # ends the holder
        await holder.wait()
    async with open_qdrant(Settings(data_dir=data_dir)):  # free again once the holder is gone
        pass


@pytest.fixture
async def qdrant_rest_url() -> AsyncIterator[str]:
    """A stand-in Qdrant server (none can run here) speaking its REST protocol for the one call we make."""

    async def list_collections(request: web.Request) -> web.Response:
        if request.headers.get("api-key") != "right-key":
            return web.json_response({"status": {"error": "Invalid api-key"}, "time": 0.0}, status=401)
        return web.json_response({"result": {"collections": [{"name": "docs"}]}, "status": "ok", "time": 0.0})

    app = web.Application()
    app.router.add_get("/collections", list_collections)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
async def test_configured_server_is_used_and_checked(qdrant_rest_url: str, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, qdrant_url=qdrant_rest_url, qdrant_api_key="right-key")
    async with open_qdrant(settings) as engine:
        assert engine.kind == "qdrant"
        assert await engine.list_collections() == ["docs"]
        assert await qdrant_probe(engine).check() is True
    assert not (data_dir / "qdrant").exists()
    assert not (data_dir / EDGE_DIR).exists()

    with pytest.raises(ConfigError, match="rejected the API key"):
        async with open_qdrant(settings.replace(qdrant_api_key="wrong-key")):
            pytest.fail("open_qdrant yielded with a rejected API key")


async def test_unreachable_server_raises_unavailable(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, qdrant_url="https://127.0.0.1:1", qdrant_api_key="k3y")
    with pytest.raises(Unavailable, match=r"Qdrant at https://127\.0\.0\.1:1 does not answer") as caught:
        async with open_qdrant(settings):
            pytest.fail("open_qdrant yielded for an unreachable server")
    assert "k3y" not in caught.value.message
    assert not (data_dir / EDGE_DIR).exists()


async def test_health_probe_follows_the_engine(data_dir: Path) -> None:
    async with open_qdrant(Settings(data_dir=data_dir)) as engine:
        probe = qdrant_probe(engine, timeout=0.5)
        assert probe.name == "qdrant"
        assert await probe.check() is True
    assert await probe.check() is False
