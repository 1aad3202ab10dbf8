"""Word (.docx) documents with python-docx: headings by style, paragraphs, lists and tables in body order."""

from __future__ import annotations

import io
import re
import zipfile
from typing import TYPE_CHECKING

from daveloper.documents.model import Block, BlockKind
from daveloper.documents.parsing.limits import ParseLimits, Reason, refuse
from daveloper.documents.parsing.outline import Outline

if TYPE_CHECKING:  # python-docx (and lxml) load when a Word document is parsed, not when the server starts
    from docx.document import Document
    from docx.table import Table
    from docx.text.paragraph import Paragraph

__all__ = ["parse_docx"]

#: Built-in heading styles, by name ("Heading 2") or id ("Heading2"); ids stay English in localised Word.
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)


def parse_docx(data: bytes, limits: ParseLimits) -> tuple[list[Block], str]:
    """Blocks of a DOCX body, and its title (core properties, else its Title-style paragraph)."""
    _check_container(data, limits)
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        blocks, first_h1 = _read(document)
        title = " ".join((document.core_properties.title or "").split())
    except Exception as exc:  # python-docx and lxml raise many types on damaged parts; none may escape
        raise refuse(Reason.CORRUPT_DOCUMENT, "the Word document is damaged and cannot be read") from exc
    if not blocks:
        raise refuse(Reason.NO_TEXT, "the Word document has no text")
    return blocks, title or first_h1


def _check_container(data: bytes, limits: ParseLimits) -> None:
    """Refuse zip bombs and encrypted entries before python-docx unpacks every part into memory."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except Exception as exc:  # zipfile raises BadZipFile, struct.error and more: none may escape
        raise refuse(Reason.CORRUPT_DOCUMENT, f"the ZIP container is damaged ({exc})") from exc
    if len(entries) > limits.max_zip_entries:
        raise refuse(Reason.DOCUMENT_TOO_LARGE,
                     f"the document has {len(entries)} parts; at most {limits.max_zip_entries} are allowed")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > limits.max_unpacked_bytes:
        raise refuse(Reason.DOCUMENT_TOO_LARGE,
                     f"the document unpacks to {unpacked} bytes; at most {limits.max_unpacked_bytes} are allowed")
    if any(entry.flag_bits & 0x1 for entry in entries):
        raise refuse(Reason.ENCRYPTED_DOCUMENT, "the document's ZIP container is encrypted")


def _read(document: Document) -> tuple[list[Block], str]:
    from docx.table import Table

    outline = Outline()
    blocks: list[Block] = []
    items: list[str] = []

    def flush_list() -> None:
        if items:
            blocks.append(outline.block(BlockKind.LIST, "\n".join(items)))
            items.clear()

    for part in document.iter_inner_content():
        if isinstance(part, Table):
            flush_list()
            if table := _table_text(part):
                blocks.append(outline.block(BlockKind.TABLE, table))
            continue
        text = " ".join(part.text.split())
        if not text:
            continue
        if level := _heading_level(part):
            flush_list()
            blocks.append(outline.heading(text, level))
        elif (depth := _list_depth(part)) is not None:
            items.append("  " * depth + "- " + text)
        else:
            flush_list()
            blocks.append(outline.block(BlockKind.PARAGRAPH, text))
    flush_list()
    return blocks, outline.first_h1


def _heading_level(paragraph: Paragraph) -> int:
    style = paragraph.style
    if style is None:
        return 0
    names = f"{style.name or ''} {style.style_id or ''}"
    if match := _HEADING_STYLE.search(names):
        return min(int(match.group(1)), 6)
    return 1 if (style.style_id or "").lower() == "title" else 0


def _list_depth(paragraph: Paragraph) -> int | None:
    """Nesting depth (0-based) of a list item, or ``None`` when the paragraph is not one."""
    if paragraph._p.xpath("./w:pPr/w:numPr"):
        level = paragraph._p.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
        return int(level[0]) if level and str(level[0]).isdigit() else 0
    style = paragraph.style
    return 0 if style is not None and (style.name or "").lower().startswith("list") else None


def _table_text(table: Table) -> str:
    """Rows as ``cell | cell`` lines; a merged cell counts once."""
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)
