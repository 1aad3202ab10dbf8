"""GitHubClient through a real aiohttp session against a local server speaking the GitHub REST API, with real Valkey."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daveloper.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from daveloper.scraper.github import GitHubClient, Issue, TreeEntry
from daveloper.scraper.paths import docs_files, select_files
from tests.scraper.github_server import BIG_FILE_SIZE, FakeGitHub, blob_sha

pytestmark = pytest.mark.timeout(20)

REPO = "octo-org/hello-world"
TOKEN = "ghp_test"


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub(token=TOKEN) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def client(github: FakeGitHub, session: aiohttp.ClientSession, redis: aioredis.Redis) -> GitHubClient:
    return GitHubClient(session, redis, base_url=github.url, token=TOKEN, max_wait_seconds=5, timeout=5)


async def collect(client: GitHubClient, repo: str = REPO, **kwargs: object) -> list[Issue]:
    return [issue async for issue in client.issues(repo, **kwargs)]  # type: ignore[arg-type]


# --- happy paths ----------------------------------------------------------------------------------


async def test_repository_reads_metadata(client: GitHubClient, github: FakeGitHub) -> None:
    repo = await client.repository(REPO)
    assert repo.full_name == REPO
    assert repo.default_branch == "main"
    assert (repo.description, repo.stars, repo.license, repo.language) == ("A test repository", 42, "MIT", "Python")
    assert repo.topics == ("testing", "github")
    assert repo.html_url == f"https://github.com/{REPO}"
    (request,) = github.requests
    assert request.path == f"/repos/{REPO}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert request.headers["User-Agent"] == "daveloper"
    assert (await client.repository("octo-org/no-readme")).description == ""  # null in JSON


async def test_readme_is_decoded_and_none_when_missing(client: GitHubClient, github: FakeGitHub) -> None:
    readme = await client.readme(REPO)
    assert readme is not None
    data = github.repos[REPO].files["README.md"]
    assert (readme.path, readme.data, readme.sha, readme.size) == ("README.md", data, blob_sha(data), len(data))
    assert readme.text == data.decode()
    assert readme.html_url == f"https://github.com/{REPO}/blob/main/README.md"
    at_tag = await client.readme(REPO, "v1.0")
    assert at_tag is not None
    assert github.requests[-1].query == {"ref": "v1.0"}
    assert await client.readme("octo-org/no-readme") is None


async def test_tree_lists_blobs_with_sizes_and_directories(client: GitHubClient, github: FakeGitHub) -> None:
    tree = await client.tree(REPO, "main")
    assert not tree.truncated
    files = github.repos[REPO].files
    blobs = {e.path: e for e in tree.entries if e.type == "blob"}
    assert blobs.keys() == files.keys()
    assert blobs["src/pkg/app.py"] == TreeEntry("src/pkg/app.py", "blob", blob_sha(files["src/pkg/app.py"]),
                                                 len(files["src/pkg/app.py"]))
    dirs = {e.path for e in tree.entries if e.type == "tree"}
    assert dirs == {"data", "docs", "docs/api", "src", "src/pkg", "tests"}
    assert all(e.size is None for e in tree.entries if e.type == "tree")
    assert github.requests[-1].query == {"recursive": "1"}


async def test_truncated_tree_is_reported(client: GitHubClient, github: FakeGitHub) -> None:
    github.truncate_trees = True
    tree = await client.tree(REPO, "main")
    assert tree.truncated
    assert len(tree.entries) < len(github.repos[REPO].files)


async def test_file_is_decoded_from_base64(client: GitHubClient, github: FakeGitHub) -> None:
    file = await client.file(REPO, "src/pkg/util.py", "v1.0")
    data = github.repos[REPO].files["src/pkg/util.py"]
    assert (file.path, file.data, file.text, file.sha) == ("src/pkg/util.py", data, data.decode(), blob_sha(data))
    assert github.requests[-1].path == f"/repos/{REPO}/contents/src/pkg/util.py"
    assert github.requests[-1].query == {"ref": "v1.0"}


async def test_file_over_the_cap_is_refused_without_download(client: GitHubClient, github: FakeGitHub) -> None:
    with pytest.raises(ResourceExhausted) as caught:
        await client.file(REPO, "data/big.bin", "main")
    assert caught.value.reason == "GITHUB_FILE_TOO_LARGE"
    assert caught.value.retry_after is None  # retrying cannot help
    assert len(github.requests) == 1


async def test_file_over_one_megabyte_comes_raw(client: GitHubClient, github: FakeGitHub) -> None:
    file = await client.file(REPO, "data/big.bin", "main", max_size=2 * BIG_FILE_SIZE)
    assert file.data == github.repos[REPO].files["data/big.bin"]
    assert file.size == BIG_FILE_SIZE
    json_request, raw_request = github.requests
    assert json_request.headers["Accept"] == "application/vnd.github+json"
    assert raw_request.headers["Accept"] == "application/vnd.github.raw+json"


async def test_file_errors(client: GitHubClient) -> None:
    with pytest.raises(InvalidArgument, match="directory") as directory:
        await client.file(REPO, "src/pkg", "main")
    assert directory.value.violations[0][0] == "path"
    with pytest.raises(NotFound, match=r"missing\.py"):
        await client.file(REPO, "src/missing.py", "main")
    with pytest.raises(NotFound):
        await client.file(REPO, "src/pkg/app.py", "no-such-branch")
    with pytest.raises(InvalidArgument) as bad_path:
        await client.file(REPO, "../etc/passwd", "main")
    assert bad_path.value.violations[0][0] == "path"
    with pytest.raises(InvalidArgument) as bad_ref:
        await client.file(REPO, "README.md", "main..other")
    assert bad_ref.value.violations[0][0] == "ref"


# --- selecting paths ------------------------------------------------------------------------------

PATHS = ["README.md", "setup.py", ".github/workflows/ci.yml", "docs/guide.md", "docs/api/ref.rst",
         "src/app.py", "src/pkg/util.py", "src/pkg/deep/x.py", "src/pkg/data.json", "tests/test_app.py",
         "srcx/other.py", "requirements.txt", "doc/notes.txt"]
ENTRIES = [TreeEntry(p, "blob", "0" * 40, 10) for p in PATHS]


@pytest.mark.parametrize(("include", "exclude", "expected"), [
    (["src/**/*.py"], [], ["src/app.py", "src/pkg/util.py", "src/pkg/deep/x.py"]),
    (["src/**"], ["**/*.json"], ["src/app.py", "src/pkg/util.py", "src/pkg/deep/x.py"]),
    (["*.md"], [], ["README.md"]),
    (["**/*.md"], [], ["README.md", "docs/guide.md"]),
    (["*.py"], [], ["setup.py"]),
    (["src/*/*.py"], [], ["src/pkg/util.py"]),
    (["**/test_*.py"], [], ["tests/test_app.py"]),
    (["**/*"], ["src/**", "docs/**", "doc/**", ".*/**"], ["README.md", "setup.py", "tests/test_app.py",
                                                          "srcx/other.py", "requirements.txt"]),
    ([".github/**/*.y?l"], [], [".github/workflows/ci.yml"]),
    (["src/pkg/[!d]*"], [], ["src/pkg/util.py"]),
    (["src/pkg/[d]*"], [], ["src/pkg/data.json"]),
    (["SRC/**"], [], []),  # case-sensitive, like git
    (["/docs/*.md"], [], ["docs/guide.md"]),  # a leading slash anchors at the root anyway
])
def test_select_files_globs(include: list[str], exclude: list[str], expected: list[str]) -> None:
    assert [e.path for e in select_files(ENTRIES, include, exclude=exclude)] == expected


def test_select_files_skips_directories_and_big_files() -> None:
    entries = [TreeEntry("src", "tree", "1" * 40, None), TreeEntry("src/a.py", "blob", "2" * 40, 100),
               TreeEntry("src/b.py", "blob", "3" * 40, 101), TreeEntry("vendor", "commit", "4" * 40, None)]
    assert [e.path for e in select_files(entries, ["**"], max_size=100)] == ["src/a.py"]
    assert [e.path for e in select_files(entries, ["**"], max_size=None)] == ["src/a.py", "src/b.py"]


async def test_docs_files_from_a_real_tree(client: GitHubClient) -> None:
    tree = await client.tree(REPO, "main")
    assert [e.path for e in docs_files(tree.entries)] == ["README.md", "docs/api/reference.rst", "docs/guide.md"]
    assert [e.path for e in docs_files(ENTRIES)] == ["README.md", "docs/guide.md", "docs/api/ref.rst",
                                                     "doc/notes.txt"]


# --- issues ---------------------------------------------------------------------------------------


async def test_issues_follow_link_pages_and_skip_pull_requests(client: GitHubClient, github: FakeGitHub) -> None:
    issues = await collect(client, limit=1000)
    expected = [i for i in github.repos[REPO].issues if "pull_request" not in i]
    assert len(expected) == 252  # 280 items of which 28 pull requests: three pages of 100
    assert [i.number for i in issues] == [i["number"] for i in expected]
    assert [r.query.get("page") for r in github.requests] == [None, "2", "3"]
    assert github.requests[0].query == {"state": "all", "per_page": "100"}
    # The next links are GitHub's /repositories/{id}/... form, followed as given.
    assert github.requests[1].path == "/repositories/1296269/issues"
    first = issues[0]
    assert (first.number, first.title, first.state, first.labels, first.comments) == (
        279, "Issue number 279", "closed", ("bug",), 4)
    assert first.html_url == f"https://github.com/{REPO}/issues/279"
    assert first.author == "user6"
    assert next(i for i in issues if i.number == 275).body == ""  # null body


async def test_issues_limit_and_state(client: GitHubClient, github: FakeGitHub) -> None:
    assert [i.number for i in await collect(client, limit=5)] == [279, 278, 277, 276, 275]
    assert len(github.requests) == 1  # stopped before fetching page 2
    open_issues = await collect(client, state="open", limit=1000)
    assert open_issues
    assert all(i.state == "open" for i in open_issues)
    with pytest.raises(InvalidArgument):
        await collect(client, state="merged", limit=5)
    with pytest.raises(InvalidArgument):
        await collect(client, limit=0)


async def test_pagination_link_to_another_host_is_not_followed(client: GitHubClient, github: FakeGitHub) -> None:
    github.link_base = "http://elsewhere.example"
    with pytest.raises(FailedPrecondition) as caught:
        await collect(client, limit=1000)
    assert caught.value.reason == "GITHUB_MISCONFIGURED"
    assert len(github.requests) == 1


# --- conditional requests -------------------------------------------------------------------------


@pytest.mark.parametrize("weak", [True, False])
async def test_second_call_is_a_free_304_from_the_etag_cache(
    github: FakeGitHub, session: aiohttp.ClientSession, redis: aioredis.Redis, weak: bool
) -> None:
    github.weak_etags = weak
    first = await GitHubClient(session, redis, base_url=github.url, token=TOKEN).repository(REPO)
    remaining = github.remaining
    # Another client instance: the cache lives in Redis, not in the object.
    second = await GitHubClient(session, redis, base_url=github.url, token=TOKEN).repository(REPO)
    assert second == first
    sent, conditional = github.requests
    assert "If-None-Match" not in sent.headers
    assert conditional.headers["If-None-Match"].startswith('W/"' if weak else '"')
    assert conditional.status == 304
    assert github.remaining == remaining  # a 304 does not count against the rate limit
    (key,) = await redis.keys("dv:gh:etag:*")
    assert 0 < await redis.ttl(key) <= 24 * 3600
    stored = repr([key, await redis.hvals(key)])
    assert TOKEN not in stored  # hashed into the key, never stored


async def test_etag_cache_is_per_token(github: FakeGitHub, session: aiohttp.ClientSession,
                                       redis: aioredis.Redis) -> None:
    await GitHubClient(session, redis, base_url=github.url, token=TOKEN).repository(REPO)
    await GitHubClient(session, redis, base_url=github.url).repository(REPO)
    assert [r.status for r in github.requests] == [200, 200]
    assert "If-None-Match" not in github.requests[1].headers


async def test_paginated_304_pages_keep_their_links(client: GitHubClient, github: FakeGitHub) -> None:
    first = await collect(client, limit=1000)
    assert await collect(client, limit=1000) == first
    assert [r.status for r in github.requests[3:]] == [304, 304, 304]


async def test_works_without_redis(github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = aioredis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        client = GitHubClient(session, down, base_url=github.url, token=TOKEN)
        assert (await client.repository(REPO)).full_name == REPO
    finally:
        await down.aclose()


# --- authentication -------------------------------------------------------------------------------


async def test_token_is_sent_only_when_configured(github: FakeGitHub, session: aiohttp.ClientSession,
                                                  redis: aioredis.Redis) -> None:
    await GitHubClient(session, redis, base_url=github.url).repository(REPO)
    await GitHubClient(session, redis, base_url=github.url, token=TOKEN).tree(REPO, "main")
    anonymous, authenticated = github.requests
    assert "Authorization" not in anonymous.headers
    assert authenticated.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_bad_token_is_a_clear_configuration_error(github: FakeGitHub, session: aiohttp.ClientSession,
                                                        redis: aioredis.Redis) -> None:
    client = GitHubClient(session, redis, base_url=github.url, token="ghp_wrong")
    with pytest.raises(FailedPrecondition, match="token") as caught:
        await client.repository(REPO)
    assert caught.value.reason == "GITHUB_AUTH_FAILED"
    assert "ghp_wrong" not in caught.value.message
    assert [r.status for r in github.requests] == [401]  # not retried


async def test_forbidden_without_rate_limit_is_permission_denied(client: GitHubClient, github: FakeGitHub) -> None:
    github.fail(403, message="Resource not accessible by integration")
    with pytest.raises(PermissionDenied, match="not accessible"):
        await client.repository(REPO)
    assert len(github.requests) == 1


# --- rate limits ----------------------------------------------------------------------------------


async def test_primary_rate_limit_with_a_near_reset_is_waited_out(client: GitHubClient, github: FakeGitHub) -> None:
    github.exhaust(reset_in=0.5)
    started = time.monotonic()
    assert (await client.repository(REPO)).full_name == REPO
    assert time.monotonic() - started >= 0.5
    assert [r.status for r in github.requests] == [403, 200]


async def test_primary_rate_limit_with_a_far_reset_raises_with_retry_after(
    client: GitHubClient, github: FakeGitHub
) -> None:
    github.exhaust(reset_in=600)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as caught:
        await client.repository(REPO)
    assert time.monotonic() - started < 1  # no pointless waiting
    assert caught.value.reason == "GITHUB_RATE_LIMITED"
    assert caught.value.retry_after == pytest.approx(600, abs=2)
    assert len(github.requests) == 1


@pytest.mark.parametrize("status", [403, 429])
async def test_secondary_rate_limit_retry_after_is_honoured(
    client: GitHubClient, github: FakeGitHub, status: int
) -> None:
    github.fail(status, retry_after=1)
    started = time.monotonic()
    assert (await client.tree(REPO, "main")).entries
    assert time.monotonic() - started >= 1
    assert [r.status for r in github.requests] == [status, 200]


async def test_secondary_rate_limit_over_the_wait_budget_raises(client: GitHubClient, github: FakeGitHub) -> None:
    github.fail(429, retry_after=120)
    with pytest.raises(ResourceExhausted) as caught:
        await client.repository(REPO)
    assert caught.value.retry_after == 120
    assert "secondary rate limit" in caught.value.message


# --- failures -------------------------------------------------------------------------------------


async def test_server_errors_are_retried(client: GitHubClient, github: FakeGitHub) -> None:
    github.fail(502, times=2)
    assert (await client.repository(REPO)).full_name == REPO
    assert [r.status for r in github.requests] == [502, 502, 200]


async def test_persistent_server_errors_are_unavailable(client: GitHubClient, github: FakeGitHub) -> None:
    github.fail(500, times=10)
    with pytest.raises(Unavailable) as caught:
        await client.repository(REPO)
    assert caught.value.reason == "GITHUB_UNAVAILABLE"
    assert len(github.requests) == 3


async def test_unreachable_github_is_unavailable(session: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = GitHubClient(session, redis, base_url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(Unavailable) as caught:
        await client.repository(REPO)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_timeouts_are_unavailable(github: FakeGitHub, session: aiohttp.ClientSession,
                                        redis: aioredis.Redis) -> None:
    github.delay = 0.5
    client = GitHubClient(session, redis, base_url=github.url, timeout=0.1)
    with pytest.raises(Unavailable) as caught:
        await client.repository(REPO)
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_missing_repository_is_not_found(client: GitHubClient) -> None:
    with pytest.raises(NotFound, match="octo-org/nope") as caught:
        await client.repository("octo-org/nope")
    assert caught.value.reason == "GITHUB_NOT_FOUND"
    with pytest.raises(NotFound):
        await client.tree("octo-org/nope", "main")


@pytest.mark.parametrize("repo", ["", "octo-org", "octo-org/", "/hello", "a/b/c", "-octo/hello", "octo--org/x",
                                  "octo/..", "octo/hello world", "octo/hello?x=1", "o" * 40 + "/x",
                                  "octo/" + "x" * 101])
async def test_invalid_repository_names_are_rejected_before_any_request(
    client: GitHubClient, github: FakeGitHub, repo: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.repository(repo)
    assert caught.value.violations[0][0] == "repo"
    assert github.requests == []


async def test_valid_unusual_names_are_accepted(client: GitHubClient, github: FakeGitHub) -> None:
    with pytest.raises(NotFound):
        await client.repository("a-1/.dot_name-x.y")
    assert github.requests[0].path == "/repos/a-1/.dot_name-x.y"


# --- GitHub Enterprise ----------------------------------------------------------------------------


async def test_enterprise_base_url_with_a_path_prefix(session: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
    async with FakeGitHub(token=TOKEN, prefix="/api/v3") as ghe:
        assert ghe.url.endswith("/api/v3")
        client = GitHubClient(session, redis, base_url=ghe.url + "/", token=TOKEN)
        assert (await client.repository(REPO)).default_branch == "main"
        assert len(await collect(client, limit=1000)) == 252
        readme = await client.readme(REPO)
        assert readme is not None
    assert all(r.path.startswith("/api/v3/") for r in ghe.requests)
    assert [r.status for r in ghe.requests] == [200] * 5


@pytest.mark.parametrize("base_url", ["api.github.com", "ftp://ghe.example.com/api/v3", "https://"])
async def test_base_url_must_be_absolute_http(session: aiohttp.ClientSession, redis: aioredis.Redis,
                                              base_url: str) -> None:
    with pytest.raises(ConfigError):
        GitHubClient(session, redis, base_url=base_url)
