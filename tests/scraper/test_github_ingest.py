"""StartGitHubIngest over real gRPC, against the local GitHub REST API server, into real Qdrant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.config import Settings
from generated.daveloper.v1 import (
    DocumentServiceStub,
    GitHubIngestSpec,
    JobEvent,
    JobKind,
    JobState,
    ScraperServiceStub,
    SearchRequest,
    StartGitHubIngestRequest,
    WatchJobRequest,
)
from tests.grpc_helpers import bearer, violations
from tests.scraper.github_server import FakeGitHub

pytestmark = pytest.mark.timeout(60)

REPO = "octo-org/hello-world"


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, github: FakeGitHub) -> Settings:
    return settings.replace(github_api_url=github.url)


async def ingest(channel: Channel, token: str, **spec: object) -> list[JobEvent]:
    scraper = ScraperServiceStub(channel)
    job = (await scraper.start_git_hub_ingest(StartGitHubIngestRequest(spec=GitHubIngestSpec(**spec)), timeout=10,
                                              metadata=bearer(token))).job
    assert job.kind == JobKind.GITHUB_INGEST
    return [r.event async for r in scraper.watch_job(WatchJobRequest(job_id=job.id), timeout=30,
                                                     metadata=bearer(token))]


async def test_readme_docs_code_and_issues_become_searchable_documents(
    channel: Channel, token: str, github: FakeGitHub
) -> None:
    events = await ingest(channel, token, repository=REPO, include_readme=True, include_docs=True,
                          code_globs=["src/**/*.py"], include_issues=True, ingest=True)
    finished = events[-1].finished
    assert finished.state == JobState.SUCCEEDED, finished
    urls = [e.page_fetched.url for e in events if e.page_fetched is not None]
    assert f"https://github.com/{REPO}/blob/main/README.md" in urls
    assert any(url.endswith("docs/guide.md") for url in urls)
    assert any(url.endswith("src/pkg/util.py") for url in urls)
    assert not any(url.endswith(("tests/test_app.py", "requirements.txt")) for url in urls)
    issues = [url for url in urls if "/issues/" in url]
    assert len(issues) == 200  # the server-side cap, newest first, pull requests skipped
    assert finished.stats.documents_ingested == len([e for e in events if e.page_fetched
                                                     and e.page_fetched.document_id])

    hits = (await DocumentServiceStub(channel).search(SearchRequest(query="hello --world", top_k=3), timeout=10,
                                                      metadata=bearer(token))).hits
    assert hits[0].source_uri.endswith("docs/guide.md")


async def test_unknown_repository_fails_the_job_with_not_found(channel: Channel, token: str) -> None:
    events = await ingest(channel, token, repository="octo-org/missing")
    finished = events[-1].finished
    assert finished.state == JobState.FAILED
    assert finished.failure.code == Status.NOT_FOUND.value


async def test_rate_limit_too_long_to_wait_fails_with_retry_info(
    channel: Channel, token: str, github: FakeGitHub
) -> None:
    github.exhaust(reset_in=3600)
    events = await ingest(channel, token, repository=REPO)
    failure = events[-1].finished.failure
    assert failure.code == Status.RESOURCE_EXHAUSTED.value
    assert failure.retry_delay is not None
    assert failure.retry_delay.total_seconds() > 3000


async def test_spec_is_validated(channel: Channel, token: str) -> None:
    scraper = ScraperServiceStub(channel)
    with pytest.raises(GRPCError) as error:
        await scraper.start_git_hub_ingest(StartGitHubIngestRequest(spec=GitHubIngestSpec(
            repository="not a repo", max_files=10**6)), timeout=5, metadata=bearer(token))
    assert error.value.status == Status.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"spec.repository", "spec.max_files"}


@pytest.mark.parametrize("ref", ["main..evil", "a b", "x~1", "-x", "x.lock", "@{0}", "a//b", "r" * 256, "é\x00"])
async def test_an_invalid_ref_is_refused_before_any_github_call(channel: Channel, token: str, github: FakeGitHub,
                                                                ref: str) -> None:
    with pytest.raises(GRPCError) as error:
        await ScraperServiceStub(channel).start_git_hub_ingest(
            StartGitHubIngestRequest(spec=GitHubIngestSpec(repository=REPO, ref=ref)), timeout=10,
            metadata=bearer(token))
    assert error.value.status == Status.INVALID_ARGUMENT
    assert "spec.ref" in violations(error.value)
    assert github.requests == []
