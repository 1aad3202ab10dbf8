"""Bytes to :class:`~daveloper.documents.model.ParsedDocument`: sniff the format, then read it.

Formats, each in its own module: PDF (:mod:`.pdf`), DOCX (:mod:`.office`),
HTML, Markdown and plain text (:mod:`.markup`), source code (:mod:`.code`);
:mod:`.sniff` decides which, from the content first.

:func:`parse` is synchronous and CPU-bound: the caller runs it in a thread.
Every failure is an :class:`~daveloper.errors.InvalidArgument` with a
:class:`Reason`; no library exception escapes it.
"""

from __future__ import annotations

from daveloper.documents.model import Block, ParsedDocument
from daveloper.documents.parsing.code import parse_code
from daveloper.documents.parsing.limits import ParseLimits, Reason, refuse
from daveloper.documents.parsing.markup import parse_html, parse_markdown, parse_plain
from daveloper.documents.parsing.office import parse_docx
from daveloper.documents.parsing.pdf import parse_pdf
from daveloper.documents.parsing.sniff import Format, sniff

__all__ = ["ParseLimits", "Reason", "parse"]

_DEFAULT_LIMITS = ParseLimits()


def parse(
    data: bytes, *, file_name: str = "", declared_type: str = "", limits: ParseLimits = _DEFAULT_LIMITS
) -> ParsedDocument:
    """Parse ``data`` into ordered blocks with heading paths, pages and line ranges.

    ``file_name`` and ``declared_type`` (a media type, parameters such as
    ``charset`` allowed) are hints; the content decides when they disagree.
    The title is the format's own (first H1, ``<title>``, DOCX or PDF metadata),
    else the file name.
    """
    sniffed = sniff(data, file_name=file_name, declared_type=declared_type)
    title = ""
    blocks: list[Block]
    match sniffed.format:
        case Format.PDF:
            blocks, title = parse_pdf(data, limits)
        case Format.DOCX:
            blocks, title = parse_docx(data, limits)
        case Format.HTML:
            blocks, title = parse_html(sniffed.text)
        case Format.MARKDOWN:
            blocks, title = parse_markdown(sniffed.text)
        case Format.PLAIN:
            blocks = parse_plain(sniffed.text)
        case Format.CODE:
            blocks = parse_code(sniffed.text, sniffed.language)
    if not blocks:
        raise refuse(Reason.NO_TEXT, "the document has no text content")
    name = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    return ParsedDocument(
        media_type=sniffed.media_type, blocks=tuple(blocks), title=title or name, language=sniffed.language
    )
