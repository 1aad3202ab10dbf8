"""HTML before and beside trafilatura: markup that hides a page's structure, and a walk that keeps it.

Two shapes of documentation lose their structure in a plain main-content extraction:

* **permalink anchors**: Node.js, Sphinx and many static-site generators put a
  ``<a href="#id">#</a>`` (or ``¶``, ``§``, an icon) in every heading, so every
  heading path read "DNS#". :func:`prepare` removes such anchors from headings.
* **DocBook XSL** (the Valgrind, GCC and PostgreSQL manuals): each heading sits
  alone in ``div.titlepage > div > div``, in a ``div.sect1``/``div.sect2`` that
  extractors do not know, after a navigation table and a table of contents;
  trafilatura dropped every heading (and sometimes whole sections). :func:`prepare`
  unwraps title pages and drops the tables of contents and navigation tables.

If the extraction still keeps fewer than half of a page's headings,
:func:`walk_structure` reads the prepared page itself: headings, paragraphs,
lists, tables and preformatted code in document order, boilerplate elements
(navigation, header, footer, sidebars, scripts, forms) left out.
"""

from __future__ import annotations

from collections.abc import Iterator

import lxml.html
from lxml.etree import ParserError, _Element

from daveloper.documents.model import Block, BlockKind
from daveloper.documents.parsing.outline import Outline

__all__ = ["heading_count", "prepare", "walk_structure"]

_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HEADING_XPATH = " or ".join(f"self::{h}" for h in _HEADINGS)
#: The texts of a heading's permalink anchor (lower-cased, stripped); an empty one is an icon or a bare target.
_PERMALINK_TEXTS = frozenset({"", "#", "¶", "§", "🔗", "⚓", "link", "permalink", "anchor", "direct link"})
_BOILERPLATE_TAGS = frozenset({"nav", "header", "footer", "aside", "script", "style", "noscript", "form", "button",
                               "template", "svg", "iframe", "select", "details"})
_BOILERPLATE_CLASSES = frozenset({"toc", "navheader", "navfooter", "nav", "sidebar", "breadcrumb", "breadcrumbs",
                                  "footer", "header", "menu", "navigation"})


def _classes(element: _Element) -> set[str]:
    return set(str(element.get("class") or "").split())


def prepare(text: str) -> _Element | None:
    """The page as an lxml tree, with permalink anchors, title-page wrappers and tables of contents gone
    (None for a page with no elements at all)."""
    try:
        # As UTF-8 bytes: lxml refuses a str that still carries an XML encoding declaration.
        root: _Element = lxml.html.document_fromstring(text.encode("utf-8", "surrogatepass"),
                                                       parser=lxml.html.HTMLParser(encoding="utf-8"))
    except ParserError:  # "Document is empty"
        return None
    for anchor in root.xpath(f"//*[{_HEADING_XPATH}]//a[starts-with(@href, '#')]"):
        if anchor.text_content().strip().lower() in _PERMALINK_TEXTS:
            anchor.drop_tree()  # keeps the anchor's tail text
    for wrapper in root.xpath("//div[contains(concat(' ', normalize-space(@class), ' '), ' titlepage ')]"):
        headings = wrapper.xpath(f".//*[{_HEADING_XPATH}]")
        if headings:
            heading = headings[0]
            heading.tail = None
            wrapper.addprevious(heading)  # moves it out of the wrapper, into the section's flow
        wrapper.drop_tree()
    for toc in root.xpath("//div[contains(concat(' ', normalize-space(@class), ' '), ' toc ')]"
                          " | //table[@summary='Navigation header' or @summary='Navigation footer']"
                          " | //details[@id='toc']"):
        toc.drop_tree()
    return root


def heading_count(root: _Element) -> int:
    """Headings with text in the page's body, outside navigation, sidebars and other boilerplate."""
    return sum(1 for h in root.xpath(f"//body//*[{_HEADING_XPATH}]")
               if h.text_content().strip() and not any(_boilerplate(a) for a in h.iterancestors()))


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _boilerplate(element: _Element) -> bool:
    tag = element.tag if isinstance(element.tag, str) else ""
    return (tag in _BOILERPLATE_TAGS or not _classes(element).isdisjoint(_BOILERPLATE_CLASSES)
            or element.get("role") in ("navigation", "banner", "contentinfo", "complementary")
            or element.get("aria-hidden") == "true")


def _list_lines(element: _Element, depth: int) -> Iterator[str]:
    for item in element:
        if item.tag != "li":
            continue
        own = [item.text or ""]
        for child in item:
            if child.tag not in ("ul", "ol"):
                own.append(child.text_content())
            own.append(child.tail or "")
        if text := _squeeze("".join(own)):
            yield "  " * depth + "- " + text
        for nested in item:
            if nested.tag in ("ul", "ol"):
                yield from _list_lines(nested, depth + 1)


def walk_structure(root: _Element, outline: Outline) -> list[Block]:
    """The prepared page's body as blocks, in document order (see the module docstring)."""
    blocks: list[Block] = []
    body = root.find("body")
    _walk(body if body is not None else root, outline, blocks)
    return blocks


def _walk(element: _Element, outline: Outline, blocks: list[Block]) -> None:
    if element.text and element.text.strip():
        blocks.append(outline.block(BlockKind.PARAGRAPH, _squeeze(element.text)))
    for child in element:
        tag = child.tag if isinstance(child.tag, str) else ""
        if not tag or _boilerplate(child):
            pass
        elif tag in _HEADINGS:
            if heading := _squeeze(child.text_content()):
                blocks.append(outline.heading(heading, int(tag[1])))
        elif tag == "pre":
            if (code := child.text_content().strip("\n")).strip():
                blocks.append(outline.block(BlockKind.CODE, code))
        elif tag in ("ul", "ol"):
            if items := "\n".join(_list_lines(child, 0)):
                blocks.append(outline.block(BlockKind.LIST, items))
        elif tag == "table":
            rows = [" | ".join(_squeeze(cell.text_content()) for cell in row.xpath("./th | ./td"))
                    for row in child.iter("tr")]
            if table := "\n".join(row for row in rows if row.strip(" |")):
                blocks.append(outline.block(BlockKind.TABLE, table))
        elif tag in ("p", "dt", "dd", "blockquote", "figcaption", "caption", "address") or not child.xpath(
                "./*[self::div or self::p or self::pre or self::ul or self::ol or self::table or self::section"
                f" or self::dl or {_HEADING_XPATH}]"):
            # A paragraph, or an element with nothing block-level inside: its text is one paragraph.
            if paragraph := _squeeze(child.text_content()):
                blocks.append(outline.block(BlockKind.PARAGRAPH, paragraph))
        else:  # div, section, article, main, dl ...: their children in order
            _walk(child, outline, blocks)
        if child.tail and child.tail.strip():
            blocks.append(outline.block(BlockKind.PARAGRAPH, _squeeze(child.tail)))
