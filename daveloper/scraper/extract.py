"""From a fetched page to what a crawl needs: text, title, links, robots directives.

Decoding follows the HTML standard's order — the HTTP ``charset``, a byte
order mark, a ``<meta>`` declaration in the first bytes — and falls back to
charset-normalizer's detection. Links come from lxml's parser (``<base>``
honoured, ``rel=nofollow`` and non-http links dropped); the readable text is
extracted later by the document pipeline (trafilatura), which also drops
navigation and boilerplate.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import charset_normalizer
import lxml.etree
import lxml.html
from w3lib.url import canonicalize_url
from yarl import URL

__all__ = ["HtmlPage", "canonical_url", "decode", "is_html", "parse_html", "parse_sitemap"]

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


def canonical_url(url: URL | str, base: URL | None = None) -> URL | None:
    """The form under which a URL is de-duplicated: no fragment, sorted query, default port dropped.

    None for what a crawler does not follow (mailto:, javascript:, data: ...).
    """
    try:
        target = URL(url) if base is None else base.join(URL(url))
    except ValueError:
        return None
    if target.scheme not in ("http", "https") or not target.host:
        return None
    text = canonicalize_url(str(target.with_fragment(None)), keep_fragments=False)
    return URL(text)  # yarl drops a default port


def is_html(media_type: str, body: bytes) -> bool:
    if media_type in HTML_TYPES:
        return True
    head = body[:512].lstrip().lower()
    return not media_type and (head.startswith((b"<!doctype html", b"<html")))


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode(body: bytes, declared_charset: str | None) -> tuple[str, str]:
    """``body`` as text, and the encoding used."""
    for bom, bom_encoding in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(bom_encoding, errors="replace"), bom_encoding
    encoding = _codec(declared_charset)
    if encoding is None and (match := _META_CHARSET.search(body[:4096])):
        encoding = _codec(match.group(1).decode("ascii", errors="ignore"))
    if encoding is None:
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            best = charset_normalizer.from_bytes(body[:65536]).best()
            encoding = _codec(best.encoding if best is not None else None) or "windows-1252"
    return body.decode(encoding, errors="replace"), encoding


@dataclass(frozen=True, slots=True)
class HtmlPage:
    """What a crawl reads off an HTML page."""

    title: str
    links: tuple[URL, ...]
    #: ``<meta name="robots" content="noindex">``: do not ingest.
    noindex: bool
    #: ``<meta name="robots" content="nofollow">``: do not follow its links.
    nofollow: bool


def parse_html(text: str, url: URL) -> HtmlPage:
    """Title, followable links (canonical, de-duplicated, in page order) and robots directives."""
    try:
        root = lxml.html.document_fromstring(text)
    except (lxml.etree.ParserError, ValueError):
        return HtmlPage("", (), noindex=False, nofollow=False)
    title = " ".join((root.findtext(".//title") or "").split())
    robots = " ".join(
        (meta.get("content") or "").lower()
        for meta in root.iter("meta") if (meta.get("name") or "").lower() in ("robots", "daveloper")
    )
    base = url
    if (base_href := root.find(".//base[@href]")) is not None and (joined := canonical_url(base_href.get("href") or "",
                                                                                           url)) is not None:
        base = joined
    links: dict[URL, None] = {}
    if "nofollow" not in robots:
        for anchor in root.iter("a", "area"):
            href = anchor.get("href")
            if not href or "nofollow" in (anchor.get("rel") or "").lower():
                continue
            if (link := canonical_url(href.strip(), base)) is not None:
                links.setdefault(link)
    return HtmlPage(title, tuple(links), noindex="noindex" in robots or "none" in robots.split(),
                    nofollow="nofollow" in robots)


def parse_sitemap(body: bytes, url: URL) -> tuple[list[URL], list[URL]]:
    """Page URLs and nested sitemap URLs listed by a sitemap (or sitemap index)."""
    try:
        root = lxml.etree.fromstring(body, parser=lxml.etree.XMLParser(resolve_entities=False, no_network=True,
                                                                       huge_tree=False))
    except lxml.etree.XMLSyntaxError:
        return [], []
    pages: list[URL] = []
    sitemaps: list[URL] = []
    for element in root.iter(f"{_SITEMAP_NS}loc", "loc"):
        parent = element.getparent()
        kind = lxml.etree.QName(parent).localname if parent is not None else "url"
        if (loc := canonical_url((element.text or "").strip(), url)) is not None:
            (sitemaps if kind == "sitemap" else pages).append(loc)
    return pages, sitemaps
