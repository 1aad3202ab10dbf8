"""PDF: text per page with pypdf, headings recovered from font sizes.

A PDF has no paragraphs or headings, only positioned runs of text. pypdf's
text visitor reports each run with its font size and position, from which:

* the body size is the size most characters are set in;
* a short line set at least 15 % larger than the body is a heading, and the
  distinct heading sizes, largest first, are levels 1, 2, 3 ...;
* a vertical gap between lines clearly wider than the usual line spacing
  starts a new paragraph.

This is a heuristic: a PDF without font-size differences gives paragraphs
per page and no headings, which the chunker handles just as well.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daveloper.documents.model import Block, BlockKind
from daveloper.documents.parsing.limits import ParseLimits, Reason, refuse
from daveloper.documents.parsing.outline import Outline

if TYPE_CHECKING:  # pypdf is imported when a PDF is parsed, not when the server starts
    from pypdf import PageObject, PdfReader

__all__ = ["parse_pdf"]

#: A line at least this much larger than the body text may be a heading.
HEADING_SCALE = 1.15
#: A gap this many times the usual line spacing starts a new paragraph.
PARAGRAPH_GAP = 1.4
_MAX_HEADING_CHARS = 120


@dataclass(slots=True)
class _Line:
    page: int
    y: float | None = None
    parts: list[str] = field(default_factory=list)
    #: characters set in each (rounded) font size
    sizes: Counter[float] = field(default_factory=Counter)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())

    @property
    def size(self) -> float:
        return self.sizes.most_common(1)[0][0] if self.sizes else 0.0


def parse_pdf(data: bytes, limits: ParseLimits) -> tuple[list[Block], str]:
    """Blocks of a PDF with 1-based page numbers, and its metadata title."""
    reader = _open(data)
    try:
        page_count = len(reader.pages)
    except Exception as exc:  # pypdf raises many types on damaged files; none may escape
        raise refuse(Reason.CORRUPT_DOCUMENT, "the PDF's page tree is damaged") from exc
    if page_count == 0:
        raise refuse(Reason.CORRUPT_DOCUMENT, "the PDF has no pages")
    if page_count > limits.max_pages:
        raise refuse(Reason.DOCUMENT_TOO_LARGE, f"the PDF has {page_count} pages; at most {limits.max_pages} are read")
    lines: list[_Line] = []
    for number in range(1, page_count + 1):
        try:
            lines.extend(_page_lines(reader.pages[number - 1], number))
        except Exception as exc:
            raise refuse(Reason.CORRUPT_DOCUMENT, f"page {number} of the PDF could not be read") from exc
    lines = [line for line in lines if line.text]
    if not lines:
        raise refuse(Reason.NO_TEXT, "the PDF has no extractable text (is it scanned? OCR it first)")
    blocks, first_h1 = _structure(lines)
    try:
        title = " ".join(str(reader.metadata.title or "").split()) if reader.metadata else ""
    except Exception:  # a damaged info dictionary only costs the title
        title = ""
    return blocks, title or first_h1


def _open(data: bytes) -> PdfReader:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:
        raise refuse(Reason.CORRUPT_DOCUMENT, "the content starts like a PDF but cannot be read as one") from exc
    if encrypted:
        # Many PDFs are encrypted only to restrict printing or copying, with an empty user password.
        try:
            opened = reader.decrypt("")
        except Exception as exc:
            raise refuse(Reason.ENCRYPTED_DOCUMENT, "the PDF uses an encryption this server cannot open") from exc
        if opened == PasswordType.NOT_DECRYPTED:
            raise refuse(Reason.ENCRYPTED_DOCUMENT, "the PDF is password protected")
    return reader


def _page_lines(page: PageObject, number: int) -> list[_Line]:
    """The page's text lines, in pypdf's reading order, each with its dominant font size and baseline."""
    lines = [_Line(number)]

    def visit(text: str, cm: Sequence[float], tm: Sequence[float], _font: object, font_size: float) -> None:
        size = round(font_size * math.hypot(tm[2], tm[3]) * math.hypot(cm[2], cm[3]) * 2) / 2
        for index, part in enumerate(text.split("\n")):
            if index:
                lines.append(_Line(number))
            line = lines[-1]
            if part.strip():
                if line.y is None:
                    line.y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
                line.sizes[size] += len(part.strip())
            line.parts.append(part)

    page.extract_text(visitor_text=visit)
    return lines


def _structure(lines: list[_Line]) -> tuple[list[Block], str]:
    sizes: Counter[float] = Counter()
    for line in lines:
        sizes.update(line.sizes)
    body = sizes.most_common(1)[0][0]
    candidates = [line for line in lines if _heading_like(line, body)]
    if len(candidates) > len(lines) * 0.3:  # then larger type is the body of this document, not its headings
        candidates = []
    levels = {size: level for level, size in enumerate(sorted({line.size for line in candidates}, reverse=True), 1)}
    heading_ids = {id(line) for line in candidates}
    leading = _usual_spacing(lines, heading_ids)

    outline = Outline()
    blocks: list[Block] = []
    paragraph: list[_Line] = []
    heading: list[_Line] = []

    def flush() -> None:
        if paragraph:
            blocks.append(outline.block(BlockKind.PARAGRAPH, _join(paragraph), page=paragraph[0].page))
            paragraph.clear()
        if heading:
            level = min(levels[heading[0].size], 6)
            blocks.append(outline.heading(_join(heading), level, page=heading[0].page))
            heading.clear()

    previous: _Line | None = None
    for line in lines:
        if id(line) in heading_ids:
            # a heading set on two lines: same size, same page, close together
            wrapped = heading and heading[-1].page == line.page and heading[-1].size == line.size
            if not (wrapped and _gap(heading[-1], line) < 2.5 * line.size):
                flush()
            heading.append(line)
        else:
            breaks = previous is None or previous.page != line.page or _gap(previous, line) > PARAGRAPH_GAP * leading
            if heading or breaks:
                flush()
            paragraph.append(line)
        previous = line
    flush()
    return blocks, outline.first_h1


def _heading_like(line: _Line, body: float) -> bool:
    text = line.text
    return (
        line.size >= body * HEADING_SCALE
        and len(text) <= _MAX_HEADING_CHARS
        and any(char.isalpha() for char in text)
        and not text.endswith((",", ";"))
    )


def _gap(upper: _Line, lower: _Line) -> float:
    """Baseline distance from one line down to the next; infinite when unknown or going back up (a new column)."""
    if upper.y is None or lower.y is None or lower.y >= upper.y:
        return math.inf
    return upper.y - lower.y


def _usual_spacing(lines: list[_Line], headings: set[int]) -> float:
    gaps = [
        gap for upper, lower in itertools.pairwise(lines)
        if upper.page == lower.page and id(upper) not in headings and id(lower) not in headings
        and (gap := _gap(upper, lower)) < math.inf
    ]
    return statistics.median(gaps) if gaps else math.inf


def _join(lines: list[_Line]) -> str:
    """Lines of one paragraph as running text, re-joining words hyphenated at a line end."""
    text = ""
    for line in lines:
        part = line.text
        if re.search(r"[^\W\d_]-$", text) and part[:1].islower():
            text = text[:-1] + part
        else:
            text = f"{text} {part}" if text else part
    return text
