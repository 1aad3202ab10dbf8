"""A local GitHub REST API for tests: real response shapes and headers, in-memory repositories.

Usage::

    async with FakeGitHub(token="ghp_test") as github:      # or FakeGitHub(prefix="/api/v3") for GHE
        client = GitHubClient(session, redis, base_url=github.url, token="ghp_test")
        github.exhaust(reset_in=1)                           # primary rate limit: 403, remaining 0
        github.fail(503, times=2)                            # the next two requests fail
        github.fail(403, retry_after=1)                      # a secondary rate limit
        github.requests[-1].headers["If-None-Match"]         # what the client sent
        github.remaining                                     # rate limit left (304s do not spend it)

Endpoints: ``GET /repos/{o}/{r}``, ``/readme``, ``/git/trees/{ref}``, ``/contents/{path}``
(JSON, or raw bytes for ``Accept: application/vnd.github.raw``), ``/issues`` (and
``/repositories/{id}/issues``, where GitHub's ``Link`` headers point). Every 200 carries an
ETag (``W/"..."`` unless :attr:`FakeGitHub.weak_etags` is off); a matching ``If-None-Match`` gets
a 304 that, as on GitHub, costs no rate limit when the request is authenticated.
Simplification: one rate-limit pool for every caller.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = ["FakeGitHub", "FakeRepo", "RecordedRequest", "default_repos"]

_DOCS = "https://docs.github.com/rest"
PRIMARY_LIMIT_MESSAGE = ("API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, "
                         "please include the request ID 0000:1111:2222:3333:4444.")
SECONDARY_LIMIT_MESSAGE = ("You have exceeded a secondary rate limit. Please wait a few minutes before you try "
                           "again. If you reach out to GitHub Support for help, please include the request ID "
                           "0000:1111:2222:3333:4444.")
BIG_FILE_SIZE = 1_500_000  # over the contents API's 1 MB: served with encoding "none"


def blob_sha(data: bytes) -> str:
    """The git blob id of ``data``, as GitHub reports it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One repository: files at its refs (every ref has the same files), issues and pull requests."""

    full_name: str
    id: int
    files: dict[str, bytes]
    description: str | None = "A test repository"
    default_branch: str = "main"
    refs: tuple[str, ...] = ("main", "v1.0")
    stars: int = 42
    #: Newest first, as GitHub lists them; items with a ``pull_request`` key are pull requests.
    issues: list[dict[str, Any]] = field(default_factory=list)


def _issue(repo: str, number: int, *, pull_request: bool) -> dict[str, Any]:
    closed = number % 3 == 0
    stamp = f"2024-01-{1 + number % 28:02d}T10:{number % 60:02d}:00Z"
    item: dict[str, Any] = {
        "url": f"https://api.github.com/repos/{repo}/issues/{number}",
        "repository_url": f"https://api.github.com/repos/{repo}",
        "html_url": f"https://github.com/{repo}/{'pull' if pull_request else 'issues'}/{number}",
        "id": 1000 + number, "node_id": f"I_kwDO{number}", "number": number,
        "title": f"{'PR' if pull_request else 'Issue'} number {number}",
        "user": {"login": f"user{number % 7}", "id": number % 7, "type": "User"},
        "labels": [{"id": 1, "node_id": "LA_1", "name": "bug", "color": "d73a4a", "default": True,
                    "description": "Something isn't working"}] if number % 2 else [],
        "state": "closed" if closed else "open", "state_reason": "completed" if closed else None,
        "locked": False, "assignee": None, "assignees": [], "milestone": None, "comments": number % 5,
        "created_at": stamp, "updated_at": stamp, "closed_at": stamp if closed else None,
        "author_association": "CONTRIBUTOR", "body": None if number % 11 == 0 else f"Body of {number}.",
    }
    if pull_request:
        item["pull_request"] = {"url": f"https://api.github.com/repos/{repo}/pulls/{number}",
                                "html_url": f"https://github.com/{repo}/pull/{number}",
                                "diff_url": f"https://github.com/{repo}/pull/{number}.diff",
                                "patch_url": f"https://github.com/{repo}/pull/{number}.patch", "merged_at": None}
    return item


def default_repos() -> dict[str, FakeRepo]:
    """``octo-org/hello-world`` (files, 280 issues of which every 10th is a pull request) and
    ``octo-org/no-readme`` (one file, no README, no issues)."""
    files = {
        "README.md": b"# Hello World\n\nA repository for tests. \xc3\xa9t\xc3\xa9\n",
        "docs/guide.md": b"# Guide\n\nRun `hello --world`.\n",
        "docs/api/reference.rst": b"Reference\n=========\n",
        "requirements.txt": b"aiohttp>=3.10\n",
        "src/pkg/__init__.py": b"",
        "src/pkg/app.py": b"def main() -> None:\n    print('hello')\n",
        "src/pkg/util.py": b"def helper() -> int:\n    return 1\n",
        "tests/test_app.py": b"def test_main() -> None:\n    assert True\n",
        "data/big.bin": bytes(range(256)) * (BIG_FILE_SIZE // 256) + b"x" * (BIG_FILE_SIZE % 256),
    }
    hello = "octo-org/hello-world"
    issues = [_issue(hello, n, pull_request=n % 10 == 0) for n in range(280, 0, -1)]
    return {
        hello: FakeRepo(hello, 1296269, files, issues=issues),
        "octo-org/no-readme": FakeRepo("octo-org/no-readme", 1296270, {"main.py": b"print(1)\n"}, description=None),
    }


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    status: int


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    message: str


def _error(status: int, message: str, headers: dict[str, str] | None = None, docs: str = _DOCS) -> web.Response:
    return web.json_response({"message": message, "documentation_url": docs, "status": str(status)},
                             status=status, headers=headers)


def _not_found() -> web.Response:
    return _error(404, "Not Found")


@dataclass
class FakeGitHub:
    """The server. Knobs: :attr:`token`, :attr:`prefix`, :attr:`remaining`/:attr:`reset_at` (or
    :meth:`exhaust`), :meth:`fail`, :attr:`delay`, :attr:`weak_etags`, :attr:`truncate_trees`,
    :attr:`link_base`; records: :attr:`requests`."""

    #: The one valid token; any other ``Authorization`` gets 401 Bad credentials (none is anonymous access).
    token: str = "ghp_test"
    #: Path prefix of the API root: "" like api.github.com, "/api/v3" like GitHub Enterprise Server.
    prefix: str = ""
    repos: dict[str, FakeRepo] = field(default_factory=default_repos)
    limit: int = 5000
    remaining: int = 5000
    reset_at: float = field(default_factory=lambda: time.time() + 3600)
    #: Status of a primary rate limit answer (GitHub sends 403, sometimes 429).
    rate_limit_status: int = 403
    weak_etags: bool = True
    truncate_trees: bool = False
    #: Seconds before each answer.
    delay: float = 0.0
    #: Origin used in Link headers instead of the request's own (e.g. a misconfigured proxy).
    link_base: str | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._failures: deque[_Failure] = deque()
        self._runner: web.AppRunner | None = None

    def exhaust(self, reset_in: float) -> None:
        """Spend the rate limit; it comes back ``reset_in`` seconds from now."""
        self.remaining = 0
        self.reset_at = time.time() + reset_in

    def fail(self, status: int, *, times: int = 1, retry_after: float | None = None, message: str = "") -> None:
        """Answer the next ``times`` requests with ``status``; with ``retry_after`` (a 403/429), as a
        secondary rate limit."""
        default = SECONDARY_LIMIT_MESSAGE if status in (403, 429) else "Server Error"
        self._failures.extend([_Failure(status, retry_after, message or default)] * times)

    def answered(self, status: int) -> list[RecordedRequest]:
        """The requests answered with ``status``."""
        return [r for r in self.requests if r.status == status]

    async def start(self) -> str:
        app = web.Application(middlewares=[self._github])
        repo = self.prefix + "/repos/{owner}/{name}"
        app.router.add_get(repo, self._repository)
        app.router.add_get(repo + "/readme", self._readme)
        app.router.add_get(repo + "/git/trees/{ref:.+}", self._tree)
        app.router.add_get(repo + "/contents/{path:.+}", self._contents)
        app.router.add_get(repo + "/issues", self._issues)
        app.router.add_get(self.prefix + "/repositories/{id}/issues", self._issues)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{self.prefix}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGitHub:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- what every endpoint shares: auth, rate limits, ETags, forced failures -----------------------

    @web.middleware
    async def _github(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        response = await self._answer(request, handler)
        response.headers.update({"X-GitHub-Api-Version-Selected": "2022-11-28",
                                 "X-GitHub-Request-Id": f"0000:{len(self.requests)}",
                                 "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP"})
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query),
                                             CIMultiDict(request.headers), response.status))
        return response

    def _rate_headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Used": str(self.limit - self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at)), "X-RateLimit-Resource": "core"}

    async def _answer(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, credential = auth.partition(" ")
            if scheme.lower() not in ("bearer", "token") or credential != self.token:
                return _error(401, "Bad credentials")
        if time.time() >= self.reset_at:
            self.remaining, self.reset_at = self.limit, time.time() + 3600
        if self._failures:
            failure = self._failures.popleft()
            headers = self._rate_headers()
            if failure.retry_after is not None:
                headers["Retry-After"] = str(failure.retry_after)
            docs = f"{_DOCS}/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
            return _error(failure.status, failure.message, headers, docs)
        if self.remaining <= 0:
            return _error(self.rate_limit_status, PRIMARY_LIMIT_MESSAGE, self._rate_headers(),
                          f"{_DOCS}/overview/rate-limits-for-the-rest-api")
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = _not_found()
        assert isinstance(response, web.Response)
        if response.status == 200:
            digest = hashlib.sha256(response.body if isinstance(response.body, bytes) else b"").hexdigest()
            etag = f'W/"{digest}"' if self.weak_etags else f'"{digest}"'
            response.headers["ETag"] = etag
            response.headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
            sent = [tag.strip().removeprefix("W/") for tag in request.headers.get("If-None-Match", "").split(",")]
            if etag.removeprefix("W/") in sent or "*" in sent:
                if auth is None:  # GitHub: a 304 is free only for authorized requests
                    self.remaining -= 1
                return web.Response(status=304, headers={"ETag": etag, **self._rate_headers()})
        self.remaining -= 1
        response.headers.update(self._rate_headers())
        return response

    # --- endpoints --------------------------------------------------------------------------------

    def _repo(self, request: web.Request) -> FakeRepo:
        if "id" in request.match_info:
            found = [r for r in self.repos.values() if str(r.id) == request.match_info["id"]]
        else:
            found = [r for r in self.repos.values()
                     if r.full_name == f"{request.match_info['owner']}/{request.match_info['name']}"]
        if not found:
            raise web.HTTPNotFound
        return found[0]

    def _api(self, request: web.Request) -> str:
        return f"{self.link_base or request.url.origin()}{self.prefix}"

    async def _repository(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        api = f"{self._api(request)}/repos/{repo.full_name}"
        owner = repo.full_name.split("/")[0]
        return web.json_response({
            "id": repo.id, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": repo.full_name.split("/")[1],
            "full_name": repo.full_name, "private": False,
            "owner": {"login": owner, "id": 1, "type": "Organization", "url": f"{self._api(request)}/users/{owner}"},
            "html_url": f"https://github.com/{repo.full_name}", "description": repo.description, "fork": False,
            "url": api, "homepage": None, "size": 108, "stargazers_count": repo.stars, "watchers_count": repo.stars,
            "language": "Python", "has_issues": True, "forks_count": 9, "archived": False, "disabled": False,
            "open_issues_count": sum(1 for i in repo.issues if i["state"] == "open"),
            "license": {"key": "mit", "name": "MIT License", "spdx_id": "MIT", "node_id": "MDc6TGljZW5zZTEz",
                        "url": f"{self._api(request)}/licenses/mit"},
            "topics": ["testing", "github"], "visibility": "public", "default_branch": repo.default_branch,
            "pushed_at": "2024-05-01T12:00:00Z", "created_at": "2020-01-01T00:00:00Z",
            "updated_at": "2024-05-01T12:00:00Z",
        })

    def _content(self, request: web.Request, repo: FakeRepo, path: str, ref: str) -> web.Response:
        if ref not in repo.refs:
            return _error(404, f"No commit found for the ref {ref}")
        data = repo.files[path]
        if "vnd.github.raw" in request.headers.get("Accept", ""):
            return web.Response(body=data, content_type="text/plain")
        api = f"{self._api(request)}/repos/{repo.full_name}"
        encoded = base64.b64encode(data).decode() if len(data) <= 1_000_000 else ""
        sha = blob_sha(data)
        html = f"https://github.com/{repo.full_name}/blob/{ref}/{path}"
        return web.json_response({
            "type": "file", "encoding": "base64" if encoded else "none", "size": len(data),
            "name": path.rsplit("/", 1)[-1], "path": path,
            # GitHub wraps the base64 at 60 columns, with a trailing newline.
            "content": "".join(encoded[i:i + 60] + "\n" for i in range(0, len(encoded), 60)),
            "sha": sha, "url": f"{api}/contents/{path}?ref={ref}", "git_url": f"{api}/git/blobs/{sha}",
            "html_url": html, "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{path}",
            "_links": {"self": f"{api}/contents/{path}?ref={ref}", "git": f"{api}/git/blobs/{sha}", "html": html},
        })

    async def _readme(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        readme = next((p for p in repo.files if "/" not in p and p.lower().startswith("readme")), None)
        if readme is None:
            return _not_found()
        return self._content(request, repo, readme, request.query.get("ref", repo.default_branch))

    async def _contents(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        path, ref = request.match_info["path"], request.query.get("ref", repo.default_branch)
        if path in repo.files:
            return self._content(request, repo, path, ref)
        below = sorted({p[len(path) + 1:].split("/")[0] for p in repo.files if p.startswith(path + "/")})
        if not below or ref not in repo.refs:
            return _not_found()
        return web.json_response([{"type": "dir" if f"{path}/{name}" not in repo.files else "file",
                                   "name": name, "path": f"{path}/{name}"} for name in below])

    async def _tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        ref = request.match_info["ref"]
        if ref not in repo.refs:
            return _not_found()
        api = f"{self._api(request)}/repos/{repo.full_name}/git"
        dirs = sorted({"/".join(p.split("/")[:i]) for p in repo.files for i in range(1, p.count("/") + 1)})
        entries: list[dict[str, Any]] = [{"path": d, "mode": "040000", "type": "tree",
                                          "sha": hashlib.sha1(d.encode()).hexdigest(),
                                          "url": f"{api}/trees/{hashlib.sha1(d.encode()).hexdigest()}"} for d in dirs]
        for path, data in repo.files.items():
            sha = blob_sha(data)
            entries.append({"path": path, "mode": "100644", "type": "blob", "sha": sha, "size": len(data),
                            "url": f"{api}/blobs/{sha}"})
        entries.sort(key=lambda e: e["path"])
        if request.query.get("recursive") in (None, "0", "false"):
            entries = [e for e in entries if "/" not in e["path"]]
        if self.truncate_trees:
            entries = entries[: len(entries) // 2]
        sha = hashlib.sha1(f"{repo.full_name}@{ref}".encode()).hexdigest()
        return web.json_response({"sha": sha, "url": f"{api}/trees/{sha}", "tree": entries,
                                  "truncated": self.truncate_trees})

    async def _issues(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        state = request.query.get("state", "open")
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = int(request.query.get("page", "1"))
        items = [i for i in repo.issues if state == "all" or i["state"] == state]
        last = max(math.ceil(len(items) / per_page), 1)
        # Like GitHub, the links point at /repositories/{id}/issues, with absolute URLs.
        base = f"{self._api(request)}/repositories/{repo.id}/issues?state={state}&per_page={per_page}&page="
        rels = []
        if page < last:
            rels += [f'<{base}{page + 1}>; rel="next"', f'<{base}{last}>; rel="last"']
        if page > 1:
            rels = [f'<{base}{page - 1}>; rel="prev"', f'<{base}1>; rel="first"', *rels]
        headers = {"Link": ", ".join(rels)} if rels else {}
        return web.json_response(items[(page - 1) * per_page: page * per_page], headers=headers)
