"""Tools the agent offers the model, and how their results come back.

A tool never fails a turn: bad arguments, a failing dependency or a timeout
become a tool result the model reads (``is_error``), and the turn goes on.

Results are cached in Redis per session, tool, arguments and document filter, with
a TTL, and each cached result carries the session's document version (a counter
the catalog bumps on every store and delete) it was computed against: it is reused
only while that version is current, so an answer never quotes a deleted document
or misses a new one. The version and the cached result are read in one round trip;
a result is stored with the version read *before* it was computed, so a change
made meanwhile makes it stale at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from daveloper.agent.llm.passages import NO_PASSAGES
from daveloper.agent.model import ToolSpec
from daveloper.documents.model import Hit
from daveloper.documents.search import DocumentSearch
from daveloper.errors import DaveloperError
from daveloper.keys import Keys

__all__ = ["GITHUB_REPO", "SCRAPE_URL", "SEARCH_DOCUMENTS", "ToolOutcome", "Toolbox", "WebTools"]

SEARCH_DOCUMENTS = ToolSpec(
    name="search_documents",
    description="Search the user's uploaded documents and scraped pages; returns numbered passages to cite as [n].",
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, in natural language or identifiers."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "How many passages."},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)

SCRAPE_URL = ToolSpec(
    name="scrape_url",
    description="Fetch one web page, add it to the user's documents, and return its opening passages to cite as [n].",
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "An absolute http(s) URL."}},
        "required": ["url"],
        "additionalProperties": False,
    },
)
GITHUB_REPO = ToolSpec(
    name="github_repo",
    description="Read a GitHub repository's README into the user's documents and return its opening passages.",
    parameters={
        "type": "object",
        "properties": {"repository": {"type": "string", "description": "owner/name, e.g. python/cpython."}},
        "required": ["repository"],
        "additionalProperties": False,
    },
)


class WebTools(Protocol):
    """The scraper behind ``scrape_url`` and ``github_repo`` (:class:`daveloper.scraper.tools.WebTools`)."""

    @property
    def github_enabled(self) -> bool: ...

    async def scrape_url(self, session_id: str, url: str) -> list[Hit]: ...

    async def github_repo(self, session_id: str, repository: str) -> list[Hit]: ...


@dataclass
class ToolOutcome:
    """What a tool call produced: text for the model, and search hits to cite."""

    content: str
    is_error: bool = False
    hits: list[Hit] = field(default_factory=list)
    seconds: float = 0.0


#: A tool: (session id, arguments, allowed document ids) -> outcome.
Tool = Callable[[str, dict[str, Any], Sequence[str]], Awaitable[ToolOutcome]]


class Toolbox:
    """The tools available to a turn, by name."""

    def __init__(self, *, search: DocumentSearch, redis: aioredis.Redis, document_version: Callable[[str], str],
                 web: WebTools | None = None, cache_ttl: int = 600, timeout: float = 30.0,
                 enabled: Callable[[str], bool] = lambda name: True, prefix: str = "dv:") -> None:
        #: Whether a tool is switched on (runtime options); a switched-off tool is neither offered nor run.
        self._enabled = enabled
        self._search = search
        self._redis = redis
        #: The key of a session's document version counter (:meth:`daveloper.documents.catalog.Catalog.version_key`).
        self._document_version = document_version
        self._keys = Keys(prefix)
        self._web = web
        self._cache_ttl = cache_ttl
        self._timeout = timeout
        self._tools: dict[str, tuple[ToolSpec, Tool]] = {SEARCH_DOCUMENTS.name: (SEARCH_DOCUMENTS, self._documents)}
        if web is not None:
            self._tools[SCRAPE_URL.name] = (SCRAPE_URL, self._scrape)
            if web.github_enabled:
                self._tools[GITHUB_REPO.name] = (GITHUB_REPO, self._github)

    @property
    def names(self) -> frozenset[str]:
        """Every tool this box has, switched on or not."""
        return frozenset(self._tools)

    def specs(self, allowed: Sequence[str] = ()) -> list[ToolSpec]:
        """The tools offered to the model (all of them, or only those ``allowed``)."""
        return [spec for name, (spec, _) in self._tools.items()
                if (not allowed or name in allowed) and self._enabled(name)]

    async def call(self, session_id: str, name: str, arguments: str, *,
                   document_ids: Sequence[str] = ()) -> ToolOutcome:
        """Run one tool call (or reuse its cached result); never raises for the call's own problems.

        ``document_ids``, when given, restricts ``search_documents`` to those documents.
        """
        started = time.perf_counter()
        try:
            if name not in self._tools:
                raise _ToolError(f"unknown tool {name!r}")
            if not self._enabled(name):
                raise _ToolError(f"the tool {name} is switched off")
            try:
                args = json.loads(arguments or "{}")
            except json.JSONDecodeError as exc:
                raise _ToolError(f"arguments are not valid JSON: {exc.msg}") from exc
            if not isinstance(args, dict):
                raise _ToolError("arguments must be a JSON object")
            scope = tuple(dict.fromkeys(document_ids)) if name == SEARCH_DOCUMENTS.name else ()
            key = self._cache_key(session_id, name, args, scope)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._document_version(session_id))
                pipe.get(key)
                raw_version, cached = await pipe.execute()
            version = int(raw_version or 0)
            outcome = _decode(cached, version) if cached is not None else None
            if outcome is None:
                async with asyncio.timeout(self._timeout):
                    outcome = await self._tools[name][1](session_id, args, scope)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(key, _encode(outcome, version), ex=self._cache_ttl)
                    self._keys.index_in(pipe, session_id, key, self._cache_ttl)  # for the sweeper
                    await pipe.execute()
        except _ToolError as exc:
            outcome = ToolOutcome(f"error: {exc}", is_error=True)
        except DaveloperError as exc:
            outcome = ToolOutcome(f"error: {exc.message}", is_error=True)
        except TimeoutError:
            outcome = ToolOutcome(f"error: the tool did not answer within {self._timeout:g}s", is_error=True)
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def _documents(self, session_id: str, args: dict[str, Any], document_ids: Sequence[str]) -> ToolOutcome:
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _ToolError("'query' must be a non-empty string")
        top_k = args.get("top_k", 5)
        if not isinstance(top_k, int) or not 1 <= top_k <= 20:
            raise _ToolError("'top_k' must be an integer from 1 to 20")
        hits = await self._search.search(session_id, query[:2000], top_k=top_k, document_ids=document_ids)
        # Numbered and formatted by the turn, which knows the citations made before.
        return ToolOutcome(content=NO_PASSAGES, hits=hits)

    async def _scrape(self, session_id: str, args: dict[str, Any], _: Sequence[str]) -> ToolOutcome:
        url = args.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise _ToolError("'url' must be an absolute http(s) URL")
        assert self._web is not None
        hits = await self._web.scrape_url(session_id, url)
        return ToolOutcome(content="the page has no readable text", hits=hits)

    async def _github(self, session_id: str, args: dict[str, Any], _: Sequence[str]) -> ToolOutcome:
        repository = args.get("repository")
        if not isinstance(repository, str) or repository.count("/") != 1:
            raise _ToolError("'repository' must be owner/name")
        assert self._web is not None
        hits = await self._web.github_repo(session_id, repository.strip())
        return ToolOutcome(content="the repository has no README", hits=hits)

    def _cache_key(self, session_id: str, name: str, args: dict[str, Any], document_ids: Sequence[str]) -> str:
        digest = hashlib.sha256(json.dumps([name, args, sorted(document_ids)], sort_keys=True).encode()).hexdigest()
        return self._keys.tool_cache(session_id, digest[:32])


class _ToolError(Exception):
    """A problem with a tool call that the model should read and fix."""


def _encode(outcome: ToolOutcome, version: int) -> bytes:
    return json.dumps({"version": version, "content": outcome.content, "is_error": outcome.is_error,
                       "hits": [_hit_dict(h) for h in outcome.hits]}).encode()


def _decode(raw: bytes | str, version: int) -> ToolOutcome | None:
    """The cached outcome, or None if it was computed against other documents than ``version``'s."""
    data = json.loads(raw)
    if data.get("version") != version:
        return None
    hits = [Hit(**{**h, "heading_path": tuple(h["heading_path"])}) for h in data["hits"]]
    return ToolOutcome(content=data["content"], is_error=data["is_error"], hits=hits)


def _hit_dict(hit: Hit) -> dict[str, Any]:
    return {field: getattr(hit, field) for field in Hit.__dataclass_fields__}
