"""The agent's scrape_url and github_repo tools, end to end: chat → tool → scraper job → ingested, cited answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel

from daveloper.config import Settings
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    DocumentServiceStub,
    JobKind,
    ListDocumentsRequest,
    ListJobsRequest,
    ScraperServiceStub,
    SendMessage,
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


async def chat(channel: Channel, token: str, text: str) -> list[ChatEvent]:
    requests = [ChatRequest(send=SendMessage(conversation_id="web", text=text))]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]


async def test_scrape_url_ingests_the_page_and_the_answer_cites_it(channel: Channel, token: str, site: Site) -> None:
    url = site.url("/page/1/3")
    events = await chat(channel, token, f"What does {url} say?")
    call = next(e.tool_call for e in events if e.tool_call is not None)
    assert call.name == "scrape_url"
    assert url in call.arguments_json
    citation = next(e.citation for e in events if e.citation is not None)
    assert citation.location.url == url
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert not result.is_error
    completed = events[-1].turn_completed
    assert completed is not None
    assert SECRET_WORD in completed.text
    assert "[1]" in completed.text

    # The tool ran an ordinary scrape job, and the page is now one of the session's documents.
    jobs = (await ScraperServiceStub(channel).list_jobs(ListJobsRequest(), timeout=5, metadata=bearer(token))).jobs
    assert [(j.kind, list(j.scrape.urls)) for j in jobs] == [(JobKind.SCRAPE, [url])]
    documents = (await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                                   metadata=bearer(token))).documents
    assert [d.source_uri for d in documents] == [url]


async def test_scrape_url_reports_a_refusal_to_the_model(channel: Channel, token: str, site: Site) -> None:
    events = await chat(channel, token, "Summarise http://169.254.169.254/latest/meta-data please")
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert result.is_error
    assert "link-local" in result.content
    assert "failed" in events[-1].turn_completed.text


async def test_github_repo_reads_the_readme(channel: Channel, token: str, github: FakeGitHub) -> None:
    events = await chat(channel, token, "What is octo-org/hello-world about?")
    call = next(e.tool_call for e in events if e.tool_call is not None)
    assert call.name == "github_repo"
    citation = next(e.citation for e in events if e.citation is not None)
    assert citation.location.url == "https://github.com/octo-org/hello-world/blob/main/README.md"
    assert "repository for tests" in events[-1].turn_completed.text


async def test_scrape_url_reports_an_invalid_host_as_a_tool_error(channel: Channel, token: str) -> None:
    events = await chat(channel, token, f"Summarise http://{'a' * 300}.localhost/ please")
    call = next(e.tool_call for e in events if e.tool_call is not None)
    assert call.name == "scrape_url"
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert result.is_error
    assert "label longer than 63 characters" in result.content
    assert events[-1].turn_completed is not None  # the turn itself did not fail
