"""Crawl specs checked against the server's limits, into the plan a crawl follows.

A spec's problems are reported together, one violation per bad field, so a
client can fix them at once; a seed the address policy refuses ends the check
at once, as a refusal. Seeds come out canonical and once each, patterns
compiled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

from daveloper.errors import InvalidArgument
from daveloper.scraper.extract import canonical_url
from daveloper.scraper.safety import SCHEMES, AddressPolicy, normalise_url
from generated.daveloper.v1 import ScrapeSpec

__all__ = ["CrawlLimits", "CrawlPlan", "plan_crawl"]


@dataclass(frozen=True, slots=True)
class CrawlLimits:
    """Server-side bounds on what a crawl spec may ask for."""

    default_max_pages: int = 100
    max_pages: int = 2000
    max_depth: int = 10
    max_seeds: int = 50
    max_patterns: int = 20
    max_pattern_length: int = 300
    #: Pages fetched in parallel by one crawl (the fetcher bounds all crawls together).
    workers: int = 8
    #: Sitemaps (indexes included) read per seed site.
    max_sitemaps: int = 5
    #: Fetched pages of one crawl being ingested at once. Ingestion runs beside the fetching (the
    #: document pool parses while the next pages download); past this many, fetching waits.
    ingesting: int = 32


@dataclass(frozen=True, slots=True)
class CrawlPlan:
    """A checked spec: the canonical seeds, the depth and page bounds, and the compiled patterns."""

    seeds: tuple[URL, ...]
    max_depth: int
    max_pages: int
    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]


def plan_crawl(spec: ScrapeSpec, limits: CrawlLimits, policy: AddressPolicy) -> CrawlPlan:
    """Check a spec; INVALID_ARGUMENT with one violation per bad field, PERMISSION_DENIED for blocked seeds."""
    violations: dict[str, str] = {}
    seeds: list[URL] = []
    if not spec.urls:
        violations["spec.urls"] = "give at least one http(s) URL to start from"
    if len(spec.urls) > limits.max_seeds:
        violations["spec.urls"] = f"at most {limits.max_seeds} seed URLs"
    for i, text in enumerate(spec.urls[:limits.max_seeds]):
        try:
            raw = URL(text.strip())
        except ValueError:
            raw = URL()
        if raw.scheme and raw.scheme not in SCHEMES:
            policy.check_url(raw)  # file:, ftp: ...: refused as policy, not as a typo
        if (url := canonical_url(raw) if raw.is_absolute() else None) is None:
            violations[f"spec.urls[{i}]"] = "is not an absolute http(s) URL"
            continue
        try:
            url = normalise_url(url)
        except InvalidArgument as invalid:
            violations[f"spec.urls[{i}]"] = invalid.violations[0][1] if invalid.violations else invalid.message
            continue
        policy.check_url(url)
        seeds.append(url)
    if spec.max_depth > limits.max_depth:
        violations["spec.max_depth"] = f"must be at most {limits.max_depth}"
    if spec.max_pages > limits.max_pages:
        violations["spec.max_pages"] = f"must be at most {limits.max_pages}"
    include = _patterns(spec.include_patterns, "spec.include_patterns", violations, limits)
    exclude = _patterns(spec.exclude_patterns, "spec.exclude_patterns", violations, limits)
    if violations:
        # The first problem in the message too: a tool hands only the message to the model.
        first = next(iter(violations.items()))
        raise InvalidArgument(f"the scrape spec is invalid: {first[0]} {first[1]}", violations=violations)
    return CrawlPlan(tuple(dict.fromkeys(seeds)), spec.max_depth, spec.max_pages or limits.default_max_pages,
                     include, exclude)


def _patterns(patterns: Sequence[str], field: str, violations: dict[str, str],
              limits: CrawlLimits) -> tuple[re.Pattern[str], ...]:
    if len(patterns) > limits.max_patterns:
        violations[field] = f"at most {limits.max_patterns} patterns"
        return ()
    compiled = []
    for i, pattern in enumerate(patterns):
        if len(pattern) > limits.max_pattern_length:
            violations[f"{field}[{i}]"] = f"longer than {limits.max_pattern_length} characters"
            continue
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            violations[f"{field}[{i}]"] = f"is not a regular expression: {exc}"
    return tuple(compiled)
