"""Crawled pages are documents identified by their URL: a changed page is a new version, a 304 keeps the old one."""

from __future__ import annotations

import pytest
from grpclib.client import Channel

from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    Document,
    DocumentServiceStub,
    GetDocumentRequest,
    ListDocumentsRequest,
    ScrapeRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SearchMode,
    SearchRequest,
    SendMessage,
)
from tests.grpc_helpers import bearer
from tests.scraper.site import SECRET_WORD, Site

pytestmark = pytest.mark.timeout(60)


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
