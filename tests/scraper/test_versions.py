"""Crawled pages are documents identified by their URL: a changed page is a new version, a 304 keeps the old one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel

from daveloper.app import App
from daveloper.config import Settings
from daveloper.documents.model import ChunkDraft, SparseVector, Vectors
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    Document,
    DocumentServiceStub,
    GetDocumentRequest,
    GetSessionRequest,
    GitHubIngestSpec,
    ListDocumentsRequest,
    ScrapeRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SearchMode,
    SearchRequest,
    SendMessage,
    SessionServiceStub,
    StartGitHubIngestRequest,
    WatchJobRequest,
)
from tests.grpc_helpers import bearer
from tests.scraper.github_server import FakeGitHub
from tests.scraper.site import SECRET_WORD, Site

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, github: FakeGitHub) -> Settings:
    return settings.replace(github_api_url=github.url)


async def crawl(channel: Channel, token: str, url: str) -> str:
    """Scrape one page with ingestion; the page's document id ("" when it was skipped)."""
    events = [r.event async for r in ScraperServiceStub(channel).scrape(
        ScrapeRequest(spec=ScrapeSpec(urls=[url], max_depth=0, max_pages=1, ingest=True)), timeout=30,
        metadata=bearer(token))]
    assert events[-1].finished is not None
    fetched = [e.page_fetched for e in events if e.page_fetched is not None]
    return fetched[0].document_id if fetched else ""


async def documents(channel: Channel, token: str) -> list[Document]:
    return list((await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                                   metadata=bearer(token))).documents)


async def search(channel: Channel, token: str, query: str) -> list[str]:
    found = await DocumentServiceStub(channel).search(SearchRequest(query=query, top_k=10, mode=SearchMode.SPARSE),
                                                      timeout=5, metadata=bearer(token))
    return [hit.chunk.text for hit in found.hits]


async def test_a_changed_page_replaces_its_document_and_a_304_keeps_it(channel: Channel, token: str,
                                                                      site: Site) -> None:
    url = site.url("/changing")
    first_id = await crawl(channel, token, url)
    [first] = await documents(channel, token)
    assert (first.id, first.version, first.source_uri) == (first_id, 1, url)

    # Unchanged: the server answers 304 and the document stays as it was.
    assert await crawl(channel, token, url) == ""
    assert await documents(channel, token) == [first]

    site.changing_fact = "The flux capacitor now needs 88 megawatts."
    assert await crawl(channel, token, url) == first.id
    [second] = await documents(channel, token)
    assert (second.id, second.version, second.create_time) == (first.id, 2, first.create_time)
    assert second.update_time is not None
    assert first.update_time is not None
    assert second.update_time > first.update_time
    assert second.content_hash != first.content_hash
    texts = await search(channel, token, "flux capacitor gigawatts megawatts")
    assert texts
    assert all("88 megawatts" in text for text in texts), texts
    assert not any("1.21 gigawatts" in text for text in texts)
    got = await DocumentServiceStub(channel).get_document(
        GetDocumentRequest(document_id=first.id, chunk_preview_count=10), timeout=5, metadata=bearer(token))
    assert [c.text for c in got.chunks if "gigawatts" in c.text] == []


async def chat(channel: Channel, token: str, text: str) -> list[ChatEvent]:
    requests = [ChatRequest(send=SendMessage(conversation_id="web", text=text))]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]


async def test_scrape_url_reads_the_stored_copy_of_a_page_that_answers_304(channel: Channel, token: str,
                                                                           site: Site) -> None:
    url = site.url("/page/1/3")
    for _ in range(2):
        events = await chat(channel, token, f"What does {url} say?")
        result = next(e.tool_result for e in events if e.tool_result is not None)
        assert not result.is_error, result.content
        completed = events[-1].turn_completed
        assert completed is not None
        assert SECRET_WORD in completed.text
    assert site.paths().count("/page/1/3") == 2  # the second fetch was conditional (and answered 304)
    [document] = await documents(channel, token)
    assert document.version == 1


async def test_scrape_url_passes_on_only_the_current_version_of_a_page(app: App, channel: Channel, token: str,
                                                                      site: Site) -> None:
    url = site.url("/changing")

    async def passages() -> str:
        events = await chat(channel, token, f"What does {url} say?")
        result = next(e.tool_result for e in events if e.tool_result is not None)
        assert not result.is_error, result.content
        return result.content

    assert "1.21 gigawatts" in await passages()
    site.changing_fact = "The flux capacitor now needs 88 megawatts."
    recrawled = await passages()
    assert "88 megawatts" in recrawled
    assert "gigawatts" not in recrawled
    # A version being written beside the current one (another crawl, half-way) is hidden from the
    # tool as from searches: the page answers 304 and the tool reads its stored copy.
    session = (await SessionServiceStub(channel).get_session(GetSessionRequest(), metadata=bearer(token))).session
    assert session is not None
    [document] = await documents(channel, token)
    await app.catalog.stage(session.id, document.id, "ing_half_written")
    await app.chunk_store.upsert(session.id, document.id, "ing_half_written",
                                 [ChunkDraft(index=0, text="The flux capacitor needs 3 terawatts.", token_count=7)],
                                 [Vectors(sparse=SparseVector(indices=(1,), values=(1.0,)))], source_uri=url)
    stored = await passages()
    assert "88 megawatts" in stored
    assert "terawatts" not in stored
    assert site.paths().count("/changing") == 3


async def test_a_changed_github_readme_is_a_new_version_of_its_document(channel: Channel, token: str,
                                                                       github: FakeGitHub) -> None:
    scraper = ScraperServiceStub(channel)

    async def ingest_readme() -> None:
        job = (await scraper.start_git_hub_ingest(StartGitHubIngestRequest(spec=GitHubIngestSpec(
            repository="octo-org/hello-world", include_readme=True, ingest=True)), timeout=10,
            metadata=bearer(token))).job
        events = [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id), timeout=30,
                                                           metadata=bearer(token))]
        assert events[-1].finished is not None

    await ingest_readme()
    [first] = await documents(channel, token)
    github.repos["octo-org/hello-world"].files["README.md"] = b"# Hello World\n\nThe zebracorn build now needs Rust.\n"
    await ingest_readme()
    [second] = await documents(channel, token)
    assert (second.id, second.version, second.source_uri) == (first.id, 2, first.source_uri)
    assert await search(channel, token, "repository tests zebracorn") == [
        "Hello World\n\nThe zebracorn build now needs Rust."]
