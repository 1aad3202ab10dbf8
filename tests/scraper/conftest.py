"""Scraper fixtures: the generated test site, and an app allowed to fetch from it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daveloper.config import Settings
from tests.scraper.site import Site, serve_site


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with serve_site(Site()) as running:
        yield running


@pytest.fixture
def settings(settings: Settings, site: Site) -> Settings:
    """The app may fetch from the test site's address and port (and nothing else on loopback)."""
    return settings.replace(scrape_allow=(f"127.0.0.1:{site.port}",), scrape_timeout_seconds=1.0,
                            scrape_max_page_bytes=1024 * 1024, scrape_jobs_per_session=4)
