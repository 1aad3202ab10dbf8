"""Browser and Node client tests: a real app and edge, driven by Node scripts in this folder.

The scripts run as subprocesses (awaited with asyncio, so the edge keeps serving in this
event loop) and print one JSON object that the tests assert on. ``scripts/browser-deps``
installs Chromium and the npm packages; when it cannot, the tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daveloper.agent.llm.offline import OfflineChatModel
from daveloper.agent.model import ModelEvent, TextDelta
from daveloper.app import App, open_app
from daveloper.config import Settings
from tests.edge.conftest import edge, edge_settings, http  # noqa: F401  (fixtures used by these tests)

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ARTIFACTS = HERE / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
#: How long the local site's slow page makes a fetch wait (the Stop test presses Stop well before).
SLOW_PAGE_SECONDS = 20.0
#: The Content-Security-Policy the page must be served with (docs/websocket-protocol.md §9).
CSP = "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'"


def _install(*args: str) -> None:
    result = subprocess.run([str(ROOT / "scripts" / "browser-deps"), *args], capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/browser-deps failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """tests/browser/node_modules with ``ws`` (and ``playwright-core``) installed."""
    _install("--no-browser")
    return HERE / "node_modules"


@pytest.fixture(scope="session")
def chromium(node_packages: Path) -> Path:
    """Debian's Chromium. Missing and not installable is a failure: CI must run these tests."""
    _install()
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing and scripts/browser-deps did not install it")
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


@dataclass
class NodeRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The script's JSON summary (its last stdout line)."""
        assert self.returncode == 0, f"node exited {self.returncode}\n{self.stdout}\n{self.stderr}"
        lines = self.stdout.strip().splitlines()
        assert lines, f"node printed nothing\n{self.stderr}"
        return json.loads(lines[-1])


async def run_node(script: str, *args: str, limit: float = 40.0) -> NodeRun:
    """Run ``node <script> <args>`` in this folder without blocking the event loop."""
    env = {**os.environ, "NODE_PATH": str(HERE / "node_modules"), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    process = await asyncio.create_subprocess_exec(
        "node", str(HERE / script), *args, cwd=HERE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        pytest.fail(f"node {script} timed out after {limit} s\n{stdout.decode()}\n{stderr.decode()}")
    return NodeRun(process.returncode or 0, stdout.decode(), stderr.decode())


# ---- a tiny local web site for the scraper (and a slow page for the Stop test) ----

_PAGE = """<!doctype html><html><head><title>{title}</title></head>
<body><h1>{title}</h1><p>{body}</p>{links}</body></html>"""

SITE_PAGES = {
    "/docs/": ("Widget docs", "Start here to learn about widgets.", ["/docs/install", "/docs/usage"]),
    "/docs/install": ("Installing widgets", "Install the widget with the package manager.", ["/docs/usage"]),
    "/docs/usage": ("Using widgets", "Call the widget twice a day for best results.", ["/docs/"]),
}


@dataclass
class Site:
    url: str
    host_port: str


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    """A local site: three linked pages under ``/docs/`` and ``/slow``, which answers very late."""
    release = asyncio.Event()

    async def page(request: web.Request) -> web.Response:
        title, body, links = SITE_PAGES[request.path]
        anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links)
        return web.Response(text=_PAGE.format(title=title, body=body, links=anchors), content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), SLOW_PAGE_SECONDS)
        return web.Response(text=_PAGE.format(title="Slow", body="Finally.", links=""), content_type="text/html")

    application = web.Application()
    for path in SITE_PAGES:
        application.router.add_get(path, page)
    application.router.add_get("/slow", slow)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield Site(url=f"http://127.0.0.1:{port}", host_port=f"127.0.0.1:{port}")
    finally:
        release.set()  # let a pending slow request finish so cleanup does not wait for it
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings, site: Site) -> Settings:
    """The shared test settings, plus: the local site may be scraped, and small token deltas.

    Small deltas (12 characters) make the offline provider's answer arrive in many events,
    so the page visibly streams and a drop can land in the middle of an answer.
    """
    return settings.replace(scrape_allow=(site.host_port,), coalesce_chars=12)


class PacedOfflineModel(OfflineChatModel):
    """The offline provider with a 10 ms pause after each text delta.

    The page renders once per animation frame, and the offline answer is otherwise streamed
    within a millisecond or two: one frame, one visible step. Paced, an answer spans several
    frames, so the page visibly streams and a drop can land in the middle of an answer.
    """

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[ModelEvent, None]:
        async for event in super().stream(*args, **kwargs):
            yield event
            if isinstance(event, TextDelta):
                await asyncio.sleep(0.01)


@pytest.fixture
async def app(settings: Settings, redis: Any) -> AsyncIterator[App]:
    """The shared app fixture, answering with :class:`PacedOfflineModel`."""
    async with open_app(settings, chat_model=PacedOfflineModel()) as running:
        yield running
