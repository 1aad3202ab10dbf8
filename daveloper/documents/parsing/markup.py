"""Markdown, plain text and HTML: the text formats that are prose.

Markdown keeps its source: a block's text is the exact source lines of the
block (links, emphasis and list markers included, which read well to a model
and keep line ranges honest); only heading texts are reduced to plain text.
HTML is reduced to its main content by trafilatura, which drops navigation,
footers and other boilerplate; its blocks have no line ranges. Permalink
anchors and DocBook title pages are taken out first, and a page whose
extraction lost most of its headings is read by our own structural walk
instead (see ``parsing/htmltree.py``).

Markdown is tokenised a window of lines at a time, and inline markup is parsed
for headings only: markdown-it keeps every token of a document in memory (about
2 KB per list item), and its inline parser spends milliseconds on a line of
unclosed brackets, so a hostile 32 MiB upload would otherwise cost gigabytes
and minutes.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ElementTree

from markdown_it import MarkdownIt
from markdown_it.token import Token

from daveloper.documents.model import Block, BlockKind
from daveloper.documents.parsing.htmltree import heading_count, prepare, walk_structure
from daveloper.documents.parsing.limits import Reason, refuse
from daveloper.documents.parsing.outline import Outline

__all__ = ["parse_html", "parse_markdown", "parse_plain"]

_MARKDOWN_KINDS = {
    "paragraph_open": BlockKind.PARAGRAPH,
    "bullet_list_open": BlockKind.LIST,
    "ordered_list_open": BlockKind.LIST,
    "table_open": BlockKind.TABLE,
    "blockquote_open": BlockKind.PARAGRAPH,
    "fence": BlockKind.CODE,
    "code_block": BlockKind.CODE,
    "html_block": BlockKind.PARAGRAPH,
}
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_HTML_COMMENT = re.compile(r"\A\s*(?:<!--.*?-->\s*)+\Z", re.DOTALL)
#: The first ``<title>`` and its end, found separately: one lazy ``<title>(.*?)</title>`` scanned to the end of
#: the page from every unclosed ``<title>`` (20k of them took 20 s).
_TITLE_OPEN = re.compile(r"<title\b[^>]{0,1024}>", re.IGNORECASE)
_TITLE_CLOSE = re.compile(r"</title\s*>", re.IGNORECASE)
_TITLE_SCAN = 262_144


#: Lines of Markdown tokenised at once; a single top-level block longer than this is cut into pieces.
MARKDOWN_WINDOW_LINES = 10_000


def parse_markdown(text: str) -> tuple[list[Block], str]:
    """Blocks of a CommonMark (+ tables) document, with 1-based line ranges; and its title."""
    lines = text.split("\n")
    front_title = _strip_front_matter(lines)
    parser = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).disable("inline")
    env: dict[str, object] = {}  # link reference definitions, shared by every window
    outline = Outline()
    blocks: list[Block] = []
    offset = 0
    while offset < len(lines):
        stop = min(offset + MARKDOWN_WINDOW_LINES, len(lines))
        tokens = parser.parse("\n".join(lines[offset:stop]), env)
        tops = [index for index, token in enumerate(tokens)
                if token.level == 0 and token.nesting != -1 and token.map is not None]
        following = stop
        if stop < len(lines) and len(tops) > 1:
            # The window's last block may go on past it: it starts the next window instead.
            following = offset + _line_range(tokens[tops.pop()])[0]
        for index in tops:
            token = tokens[index]
            start, end = (offset + line for line in _line_range(token))
            if token.type == "heading_open":
                heading = _inline_text(parser, tokens[index + 1], env)
                if heading:
                    blocks.append(outline.heading(heading, int(token.tag[1:]), start_line=start + 1, end_line=end))
                continue
            kind = _MARKDOWN_KINDS.get(token.type)
            if kind is None:  # hr, or a container we do not know: its text is not lost, it is not a block at all
                continue
            while end > start and not lines[end - 1].strip():
                end -= 1
            source = "\n".join(lines[start:end])
            if not source.strip() or (token.type == "html_block" and _HTML_COMMENT.match(source)):
                continue
            blocks.append(outline.block(kind, source, start_line=start + 1, end_line=end))
        del tokens  # before the next window's are built
        offset = following
    return blocks, outline.first_h1 or front_title


def _line_range(token: Token) -> tuple[int, int]:
    assert token.map is not None
    return token.map[0], token.map[1]


def _strip_front_matter(lines: list[str]) -> str:
    """Blank out a YAML front matter block in place (keeping line numbers); return its ``title``."""
    if not lines or lines[0].strip() != "---":
        return ""
    for number in range(1, min(len(lines), 200)):
        if lines[number].strip() in ("---", "..."):
            match = _FRONT_MATTER_TITLE.search("\n".join(lines[1:number]))
            lines[: number + 1] = [""] * (number + 1)
            return match.group(1).strip("'\"") if match else ""
    return ""


def _inline_text(parser: MarkdownIt, inline: Token, env: dict[str, object]) -> str:
    """The plain text of a heading's inline token: markup dropped, image alt texts kept."""
    parts: list[str] = []
    for child in parser.inline.parse(inline.content, parser, env, []):
        if child.type in ("text", "text_special", "code_inline", "image"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def parse_plain(text: str) -> list[Block]:
    """Paragraphs separated by blank lines, with 1-based line ranges."""
    blocks: list[Block] = []
    start: int | None = None
    lines = text.split("\n")
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip() and start is None:
            start = number
        elif not line.strip() and start is not None:
            blocks.append(Block(BlockKind.PARAGRAPH, "\n".join(lines[start - 1 : number - 1]),
                                start_line=start, end_line=number - 1))
            start = None
    return blocks


def parse_html(text: str) -> tuple[list[Block], str]:
    """The main content of an HTML page as blocks, and the page's ``<title>``."""
    try:
        page = prepare(text)
        source = page if page is not None else text
        extracted = _extract(source, favor_recall=False) or _extract(source, favor_recall=True)
        root = ElementTree.fromstring(extracted) if extracted else None
        outline = Outline()
        blocks: list[Block] = []
        main = root.find("main") if root is not None else None
        if main is not None:
            _walk_html(main, outline, blocks)
        headings = heading_count(page) if page is not None else 0
        if page is not None and headings >= 2 and 2 * sum(1 for b in blocks if b.kind is BlockKind.HEADING) < headings:
            # The extraction lost the page's structure (a DocBook manual): read it ourselves.
            outline = Outline()
            blocks = walk_structure(page, outline)
    except Exception as exc:  # trafilatura and lxml raise many types on hostile markup; none may escape
        raise refuse(Reason.CORRUPT_DOCUMENT, "the HTML could not be read") from exc
    if not blocks:
        raise refuse(Reason.NO_TEXT, "the HTML page has no main text content")
    title = ""
    if (opening := _TITLE_OPEN.search(text, 0, _TITLE_SCAN)) and (
        closing := _TITLE_CLOSE.search(text, opening.end(), _TITLE_SCAN)
    ):
        title = " ".join(html.unescape(text[opening.end():closing.start()]).split())
    return blocks, title or outline.first_h1


def _extract(text: object, *, favor_recall: bool) -> str | None:
    # trafilatura with lxml takes ~0.1 s to import: only when HTML is parsed (document workers import it early)
    from trafilatura import bare_extraction
    from trafilatura.core import determine_returnstring
    from trafilatura.settings import Extractor

    # What trafilatura.extract(output_format="xml", ...) does, less the simhash fingerprint of the text
    # that it computes for every non-text format and we never read: that was half of a web page's cost.
    options = Extractor(output_format="xml", recall=favor_recall, tables=True, comments=False, images=False,
                        links=False, formatting=False, dedup=False, with_metadata=False)
    document = bare_extraction(text, options=options, as_dict=False)
    if document is None or isinstance(document, dict):
        return None
    return determine_returnstring(document, options)


def _walk_html(element: ElementTree.Element, outline: Outline, blocks: list[Block]) -> None:
    """Turn trafilatura's XML (``head``, ``p``, ``list``, ``table``, ``code``, ``quote``) into blocks."""
    if element.text and element.text.strip():
        blocks.append(outline.block(BlockKind.PARAGRAPH, _squeeze(element.text)))
    for child in element:
        if child.tag == "head":
            rend = child.get("rend", "")
            level = int(rend[1]) if re.fullmatch(r"h[1-6]", rend) else 2
            if heading := _squeeze(_element_text(child)):
                blocks.append(outline.heading(heading, level))
        elif child.tag == "list":
            if items := _list_text(child, depth=0):
                blocks.append(outline.block(BlockKind.LIST, items))
        elif child.tag == "table":
            rows = [" | ".join(_squeeze(_element_text(cell)) for cell in row) for row in child.iter("row")]
            if table := "\n".join(row for row in rows if row.strip(" |")):
                blocks.append(outline.block(BlockKind.TABLE, table))
        elif child.tag == "code":
            if (code := _element_text(child).strip("\n")).strip():
                blocks.append(outline.block(BlockKind.CODE, code))
        elif child.tag in ("div", "main", "body", "section"):
            _walk_html(child, outline, blocks)
        elif paragraph := _squeeze(_element_text(child)):  # p, quote, and anything else with text
            blocks.append(outline.block(BlockKind.PARAGRAPH, paragraph))
        if child.tail and child.tail.strip():
            blocks.append(outline.block(BlockKind.PARAGRAPH, _squeeze(child.tail)))


def _list_text(element: ElementTree.Element, depth: int) -> str:
    lines: list[str] = []
    for item in element.findall("item"):
        own = [item.text or ""] + [_element_text(child) + (child.tail or "") for child in item if child.tag != "list"]
        if text := _squeeze("".join(own)):
            lines.append("  " * depth + "- " + text)
        lines.extend(_list_text(nested, depth + 1) for nested in item.findall("list"))
    return "\n".join(line for line in lines if line)


def _element_text(element: ElementTree.Element) -> str:
    """All text under ``element``, with ``<lb/>`` as a newline."""
    parts = [element.text or ""]
    for child in element:
        parts.append("\n" if child.tag == "lb" else _element_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _squeeze(text: str) -> str:
    """Whitespace collapsed within lines; blank lines dropped."""
    return "\n".join(" ".join(line.split()) for line in text.split("\n") if line.strip())
