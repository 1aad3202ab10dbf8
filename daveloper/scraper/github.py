"""A small async client for the GitHub REST API (github.com or GitHub Enterprise Server).

Used by the scraper's GitHub ingestion jobs and the agent's ``github_repo`` tool. It reads
repositories, READMEs, git trees, file contents and issues, and selects paths from a tree
with globs (:func:`select_files`, :func:`docs_files`).

Every GET is conditional: the ETag and body of each answer are kept in Redis for a day and
sent back as ``If-None-Match``; GitHub answers ``304 Not Modified`` without charging the rate
limit, and the cached body is used. Failures are translated here, once:

=======================================================  =====================================================
GitHub answer                                            Daveloper error (reason)
=======================================================  =====================================================
403/429 with ``X-RateLimit-Remaining: 0`` or             waits and retries when the wait fits
``Retry-After`` (primary or secondary rate limit)        ``max_wait_seconds``, else ``ResourceExhausted``
                                                         (``GITHUB_RATE_LIMITED``) with ``retry_after``
401 (bad token)                                          ``FailedPrecondition`` (``GITHUB_AUTH_FAILED``)
403 (no access)                                          ``PermissionDenied`` (``GITHUB_FORBIDDEN``)
404                                                      ``NotFound`` (``GITHUB_NOT_FOUND``)
400, 422                                                 ``InvalidArgument`` (``GITHUB_REQUEST_REJECTED``)
other 4xx (409 empty repository, 451 blocked, ...)       ``FailedPrecondition`` (``GITHUB_REQUEST_FAILED``)
5xx, connection errors, timeouts (after 3 attempts)      ``Unavailable`` (``GITHUB_UNAVAILABLE``)
=======================================================  =====================================================
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from opentelemetry.trace import SpanKind
from yarl import URL

from daveloper.breaker import CircuitBreaker
from daveloper.errors import (
    ConfigError,
    DaveloperError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from daveloper.scraper.github_cache import ETagCache
from daveloper.scraper.github_models import Issue, RepoFile, Repository, Tree, TreeEntry
from daveloper.tracing import span

__all__ = ["DEFAULT_MAX_FILE_SIZE", "GitHubClient", "Issue", "RepoFile", "Repository", "Tree", "TreeEntry",
           "checked_ref", "checked_repository"]

log = logging.getLogger(__name__)

#: Files larger than this are not fetched or selected unless the caller raises the cap.
DEFAULT_MAX_FILE_SIZE = 1024 * 1024
_JSON = "application/vnd.github+json"
_RAW = "application/vnd.github.raw+json"
_API_VERSION = "2022-11-28"
_ATTEMPTS = 3  # per request, for 5xx answers and connection errors
_BACKOFF = 0.25  # seconds before the 2nd attempt, doubled for each further one
_RATE_LIMIT_RETRIES = 3
_SECONDARY_LIMIT_WAIT = 60.0  # GitHub: without Retry-After, "wait for at least one minute"
_MAX_ERROR_MESSAGE = 300
# GitHub's rules: an owner is 1-39 alphanumerics or single inner hyphens; a repository name is
# 1-100 of [A-Za-z0-9._-] other than "." and "..".
_OWNER = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
# git-check-ref-format, roughly: no control characters, spaces or ~^:?*[\ and no "..".
_REF = re.compile(r"[^\x00-\x20\x7f~^:?*\[\\]+")


@dataclass(frozen=True)
class _Answer:
    body: bytes
    link: str  # the Link header, "" when none


def checked_repository(repo: str) -> tuple[str, str]:
    """``(owner, name)`` of ``owner/name``; ``InvalidArgument`` (field ``repo``) unless GitHub allows both."""
    owner, _, name = repo.partition("/")
    if not (_OWNER.fullmatch(owner) and _NAME.fullmatch(name) and name not in (".", "..")):
        raise InvalidArgument.field("repo", f"must be owner/name as on GitHub, got {repo[:120]!r}")
    return owner, name




def checked_ref(ref: str) -> str:
    """``ref`` if git could name a branch, tag or commit so; else ``InvalidArgument`` (field ``ref``)."""
    if (len(ref) > 255 or not _REF.fullmatch(ref) or ".." in ref or "//" in ref or "@{" in ref or ref == "@"
            or ref.startswith(("/", ".", "-")) or ref.endswith(("/", ".", ".lock"))):
        raise InvalidArgument.field("ref", f"not a valid git ref: {ref[:120]!r}")
    return ref



def _checked_path(path: str) -> str:
    parts = path.split("/")
    if not path or "\x00" in path or any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument.field("path", f"must be a relative path inside the repository, got {path[:200]!r}")
    return path


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Unavailable("GitHub answered with invalid JSON", reason="GITHUB_UNAVAILABLE", retry_after=1.0) from exc


def _message(body: bytes) -> str:
    """GitHub's ``{"message": ...}`` of an error answer, shortened (HTML error pages give "")."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        return ""
    return message if len(message) <= _MAX_ERROR_MESSAGE else message[: _MAX_ERROR_MESSAGE - 1] + "…"


def _rate_limit_wait(status: int, headers: Mapping[str, str], message: str) -> float | None:
    """Seconds GitHub asks us to wait, when a 403/429 is a rate limit rather than a refusal."""
    if status not in (403, 429):
        return None
    try:
        if (retry_after := headers.get("Retry-After")) is not None:
            return max(float(retry_after), 0.0)  # GitHub sends seconds, never an HTTP date
        if headers.get("X-RateLimit-Remaining") == "0" and (reset := headers.get("X-RateLimit-Reset")):
            # At least a second: the reset is in whole seconds, and our clock is not GitHub's.
            return max(float(reset) - time.time(), 1.0)
    except ValueError:
        pass
    if status == 429 or "rate limit" in message.lower():
        return _SECONDARY_LIMIT_WAIT
    return None


def _error(status: int, message: str, subject: str) -> DaveloperError:
    said = f" (GitHub: {message})" if message else ""
    if status == 401:
        # The token is the deployment's setting, not the caller's credentials: UNAUTHENTICATED would
        # tell a client to re-authenticate, which cannot help. Same choice as the LLM endpoint's 401.
        return FailedPrecondition(f"GitHub rejected the configured token{said}; check the GitHub token setting",
                                  reason="GITHUB_AUTH_FAILED")
    if status == 403:
        return PermissionDenied(f"GitHub refused access to {subject}{said}", reason="GITHUB_FORBIDDEN")
    if status == 404:
        # GitHub answers 404, not 403, for private repositories the token cannot see.
        return NotFound(f"{subject} not found on GitHub (or not visible to the configured token)",
                        reason="GITHUB_NOT_FOUND")
    if status in (400, 422):
        return InvalidArgument(f"GitHub rejected the request for {subject}{said}", reason="GITHUB_REQUEST_REJECTED")
    return FailedPrecondition(f"GitHub answered HTTP {status} for {subject}{said}", reason="GITHUB_REQUEST_FAILED")


def _next_link(link: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header."""
    for part in link.split(","):
        target, _, params = part.partition(";")
        if re.search(r'rel="?next"?', params):
            return target.strip().strip("<>")
    return None


class GitHubClient:
    """GitHub REST API calls over a caller-owned ``aiohttp`` session, with an ETag cache in Redis.

    ``base_url`` is ``https://api.github.com`` or a GitHub Enterprise Server API root such as
    ``https://ghe.example.com/api/v3``. ``token`` (a personal access or installation token) is
    sent only when set. Rate-limit waits up to ``max_wait_seconds`` per request are slept through;
    longer ones raise :class:`~daveloper.errors.ResourceExhausted`. ``timeout`` bounds each HTTP
    attempt. ``redis`` must return bytes (no ``decode_responses``), as :func:`open_redis` builds it;
    ``prefix`` namespaces its keys (``<prefix>gh:etag:<sha256>``).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        *,
        base_url: str = "https://api.github.com",
        token: str | None = None,
        max_wait_seconds: float = 30.0,
        timeout: float = 20.0,
        prefix: str = "dv:",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._session = session
        #: Opens after GitHub failed several requests in a row (each after its retries).
        self.breaker = breaker or CircuitBreaker("github")
        self._base = URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ConfigError(f"the GitHub API URL must be an absolute http(s) URL, got {base_url!r}")
        self._token = token
        self._max_wait = max_wait_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache = ETagCache(redis, prefix=f"{prefix}gh:etag:", token=token)
        self._headers = {"X-GitHub-Api-Version": _API_VERSION, "User-Agent": "daveloper"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    async def repository(self, repo: str) -> Repository:
        """The repository's metadata (default branch, description, stars...)."""
        owner, name = checked_repository(repo)
        data = _json((await self._get(self._base / "repos" / owner / name, f"repository {repo}")).body)
        return Repository(
            full_name=data["full_name"], description=data.get("description") or "",
            default_branch=data["default_branch"], html_url=data["html_url"],
            stars=data.get("stargazers_count", 0), forks=data.get("forks_count", 0),
            open_issues=data.get("open_issues_count", 0), language=data.get("language") or "",
            topics=tuple(data.get("topics") or ()), license=(data.get("license") or {}).get("spdx_id") or "",
            private=bool(data.get("private")), archived=bool(data.get("archived")),
            pushed_at=data.get("pushed_at") or "",
        )

    async def readme(self, repo: str, ref: str | None = None) -> RepoFile | None:
        """The preferred README at ``ref`` (default branch when ``None``); ``None`` when there is none.

        GitHub answers 404 for a missing repository too, so ``None`` may also mean that.
        """
        owner, name = checked_repository(repo)
        url = self._base / "repos" / owner / name / "readme"
        if ref is not None:
            url = url.with_query(ref=checked_ref(ref))
        try:
            answer = await self._get(url, f"README of {repo}")
        except NotFound:
            return None
        return _repo_file(_json(answer.body), b"")

    async def tree(self, repo: str, ref: str) -> Tree:
        """Every entry under ``ref`` (a branch, tag or commit sha), recursively."""
        owner, name = checked_repository(repo)
        url = (self._base / "repos" / owner / name / "git" / "trees" / checked_ref(ref)).with_query(recursive="1")
        data = _json((await self._get(url, f"ref {ref!r} of {repo}")).body)
        if data.get("truncated"):
            log.warning("GitHub truncated the tree of %s at %s: some files will be missing", repo, ref)
        entries = tuple(TreeEntry(path=e["path"], type=e["type"], sha=e["sha"], size=e.get("size"))
                        for e in data["tree"])
        return Tree(sha=data["sha"], entries=entries, truncated=bool(data.get("truncated")))

    async def file(self, repo: str, path: str, ref: str, *, max_size: int = DEFAULT_MAX_FILE_SIZE) -> RepoFile:
        """The file at ``path`` and ``ref``; ``ResourceExhausted`` (``GITHUB_FILE_TOO_LARGE``) above ``max_size``."""
        owner, name = checked_repository(repo)
        url = (self._base / "repos" / owner / name / "contents" / _checked_path(path)).with_query(ref=checked_ref(ref))
        subject = f"{path} at {ref!r} in {repo}"
        data = _json((await self._get(url, subject)).body)
        if not isinstance(data, dict) or data.get("type") != "file":
            kind = "directory" if isinstance(data, list) else data.get("type") if isinstance(data, dict) else None
            raise InvalidArgument.field("path", f"{path} is a {kind or 'non-file'}, not a file")
        if data["size"] > max_size:
            raise ResourceExhausted(f"{subject} is {data['size']} bytes, over the {max_size} byte limit",
                                    reason="GITHUB_FILE_TOO_LARGE")
        raw = b""
        if data.get("encoding") == "none":
            # Files of 1-100 MB come without content in JSON: ask for the raw bytes.
            raw = (await self._get(url, subject, accept=_RAW)).body
        return _repo_file(data, raw)

    async def issues(self, repo: str, *, state: str = "all", limit: int) -> AsyncIterator[Issue]:
        """Up to ``limit`` issues, newest first, following ``Link: rel="next"``; pull requests are skipped."""
        owner, name = checked_repository(repo)
        if state not in ("open", "closed", "all"):
            raise InvalidArgument.field("state", "must be open, closed or all")
        if limit < 1:
            raise InvalidArgument.field("limit", "must be at least 1")
        url: URL | None = (self._base / "repos" / owner / name / "issues").with_query(state=state, per_page="100")
        count = 0
        while url is not None:
            answer = await self._get(url, f"issues of {repo}")
            for item in _json(answer.body):
                if "pull_request" in item:  # the issues endpoint lists pull requests too
                    continue
                yield Issue(
                    number=item["number"], title=item["title"], body=item.get("body") or "",
                    state=item["state"], html_url=item["html_url"],
                    author=(item.get("user") or {}).get("login", ""),
                    labels=tuple(label["name"] for label in item.get("labels") or ()),
                    comments=item.get("comments", 0), created_at=item["created_at"],
                    updated_at=item["updated_at"], closed_at=item.get("closed_at"),
                )
                count += 1
                if count >= limit:
                    return
            url = self._follow(_next_link(answer.link))

    def _follow(self, link: str | None) -> URL | None:
        if link is None:
            return None
        url = URL(link)
        if url.origin() != self._base.origin():
            # Following it would send our token to another host.
            raise FailedPrecondition(f"GitHub's pagination link leads to {url.origin()}, not {self._base.origin()}; "
                                     "check the GitHub base URL", reason="GITHUB_MISCONFIGURED")
        return url

    # --- HTTP and retries, through the ETag cache ----------------------------------------------------------

    async def _get(self, url: URL, subject: str, *, accept: str = _JSON) -> _Answer:
        """GET ``url`` through the breaker (see :meth:`_get_retrying`)."""
        async with self.breaker.guard():
            with span("github GET", SpanKind.CLIENT, **{"url.path": url.path}):
                return await self._get_retrying(url, subject, accept=accept)

    async def _get_retrying(self, url: URL, subject: str, *, accept: str = _JSON) -> _Answer:
        """GET ``url``: conditional on the cached ETag, retried on rate limits, 5xx and connection errors."""
        key = self._cache.key(url, accept)
        cached = await self._cache.get(key)
        headers = {**self._headers, "Accept": accept}
        if cached is not None:
            headers["If-None-Match"] = cached[0]
        failures = rate_limited = 0
        waited = 0.0
        while True:
            try:
                async with self._session.get(url, headers=headers, timeout=self._timeout) as response:
                    status, reply, body = response.status, response.headers, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                if failures >= _ATTEMPTS:
                    raise Unavailable(f"GitHub at {self._base} is unreachable: {exc!r}",
                                      reason="GITHUB_UNAVAILABLE", retry_after=1.0) from exc
                await asyncio.sleep(_BACKOFF * 2 ** (failures - 1))
                continue
            if status == 304 and cached is not None:
                await self._cache.refresh(key)
                return _Answer(cached[1], reply.get("Link") or cached[2])
            if 200 <= status < 300:
                if etag := reply.get("ETag"):
                    await self._cache.put(key, etag, body, reply.get("Link", ""))
                return _Answer(body, reply.get("Link", ""))
            message = _message(body)
            wait = _rate_limit_wait(status, reply, message)
            if wait is not None:
                rate_limited += 1
                if waited + wait > self._max_wait or rate_limited > _RATE_LIMIT_RETRIES:
                    raise ResourceExhausted(f"GitHub rate limit reached; retry in {wait:.0f} s"
                                            + (f" (GitHub: {message})" if message else ""),
                                            reason="GITHUB_RATE_LIMITED", retry_after=wait)
                log.info("GitHub rate limit reached for %s, waiting %.1f s", subject, wait)
                await asyncio.sleep(wait)
                waited += wait
                continue
            if status >= 500:
                failures += 1
                if failures >= _ATTEMPTS:
                    raise Unavailable(f"GitHub answered HTTP {status} for {subject}", reason="GITHUB_UNAVAILABLE",
                                      retry_after=1.0)
                await asyncio.sleep(_BACKOFF * 2 ** (failures - 1))
                continue
            raise _error(status, message, subject)


def _repo_file(data: Mapping[str, Any], raw: bytes) -> RepoFile:
    """A :class:`RepoFile` from a contents/readme answer, with ``raw`` bytes when fetched separately."""
    if not raw and data.get("encoding") == "base64":
        try:
            raw = base64.b64decode(data.get("content") or "")  # ignores GitHub's line breaks
        except binascii.Error as exc:
            raise Unavailable(f"GitHub sent undecodable content for {data.get('path')}",
                              reason="GITHUB_UNAVAILABLE", retry_after=1.0) from exc
    return RepoFile(path=data["path"], data=raw, sha=data["sha"], size=data.get("size", len(raw)),
                    html_url=data.get("html_url") or "")
