"""ParsedDocument to ChunkDrafts that follow the document's structure and fit a token budget.

Prose (Markdown, HTML, PDF, DOCX, plain text):

* A heading starts a new chunk. The one exception: a whole subsection under
  a heading of level 3 or deeper joins the open chunk when all of it fits, so
  that runs of small subsections do not become a crowd of tiny chunks; a
  level 1 or 2 heading is never crossed.
* Blocks under one heading are packed in order up to the budget. A block
  larger than the budget is split at sentence boundaries (paragraphs) or line
  boundaries (code, lists, tables), then at words, and as a last resort
  inside a word, so every chunk fits.
* When a section continues into the next chunk, that chunk starts with the
  last sentences (or lines) of the previous one, up to ``overlap_tokens``.

Source code: the units the parser found (a function, a class's lines and
each of its methods, a run of statements) are packed in order into chunks
of one top-level definition each: a definition that fits is one chunk, a
larger one is cut between its units, so a small method is never cut in two.
Only a unit over the budget alone is split, at blank lines, then lines, with
overlapping lines. A chunk's heading path is its definition path (the class,
or the class and method), kept in ``ChunkDraft.heading_path`` only: the text
of a code chunk is exactly its source lines, whose ranges stay exact.

**Heading prefix.** A chunk's text starts with its heading path,
``"Guide > Install\\n\\n..."``, when it has one. Sparse and dense retrieval
both match a passage far better when it carries the section it belongs to,
and a model reading a hit sees where it came from. The prefix counts against
the budget, is cut to its last heading when it would take more than a
quarter of it, and is also kept structured in ``ChunkDraft.heading_path``.
The headings on the path are not repeated in the body; headings of merged
subsections are, on their own line. Tokens are counted with
:func:`daveloper.documents.tokens.count_tokens`, an approximation.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from daveloper.documents.model import Block, BlockKind, ChunkDraft, ParsedDocument
from daveloper.documents.tokens import count_tokens

__all__ = ["MAX_TOKENS", "PATH_SEPARATOR", "chunk"]

#: Default budget of one chunk, in :func:`~daveloper.documents.tokens.count_tokens` tokens.
MAX_TOKENS = 350

#: Between the headings of the prefix.
PATH_SEPARATOR = " > "

_Spans = list[tuple[int, int]]
#: Cuts ``text[start:end]`` into consecutive units that cover it.
_Splitter = Callable[[str, int, int], _Spans]
#: Spans with their token counts.
_CountedSpans = list[tuple[int, int, int]]
#: A sentence ends at . ! ? before whitespace, or at a fullwidth (CJK) stop, which no space follows.
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"')\]]*\s+|(?<=[\u3002\uff01\uff1f])")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")
_LIST_ITEM = re.compile(r"\n(?=(?:[-*+]|\d{1,9}[.)])[ \t])")
_WHITESPACE = re.compile(r"\s+")
_LEADING_BLANK_LINES = re.compile(r"(?:[ \t]*\n)+")


@dataclass(frozen=True, slots=True)
class _Piece:
    """A block, or a slice of one, that goes into a chunk whole."""

    block: int  # index of the source block
    start: int  # slice of the block's text
    end: int
    text: str
    tokens: int
    #: content: the block's heading path; heading: the path it opens (its parents and itself)
    path: tuple[str, ...]
    level: int  # heading level, 0 for content
    page: int
    start_line: int
    end_line: int


def chunk(doc: ParsedDocument, *, max_tokens: int = MAX_TOKENS, overlap_tokens: int = 40,
          block_tokens: Sequence[int] | None = None) -> list[ChunkDraft]:
    """Cut ``doc`` into chunks of at most ``max_tokens`` (prefix included), indexed 0..n-1; deterministic.

    ``block_tokens``: ``count_tokens`` of each block's text, when the caller has counted them already.
    """
    if max_tokens < 8 or not 0 <= overlap_tokens <= max_tokens // 2:
        raise ValueError(f"need max_tokens >= 8 and 0 <= overlap_tokens <= max_tokens // 2, "
                         f"got {max_tokens} and {overlap_tokens}")
    if block_tokens is not None and len(block_tokens) != len(doc.blocks):
        raise ValueError(f"{len(block_tokens)} block token counts for {len(doc.blocks)} blocks")
    packer = _Packer(doc.blocks, max_tokens, overlap_tokens, code=bool(doc.language),
                     block_tokens=block_tokens or [count_tokens(block.text) for block in doc.blocks])
    if doc.language:
        _pack_code(packer)
    else:
        _pack_prose(packer)
    packer.close(carry=False)
    return [
        ChunkDraft(index=index, text=text, token_count=tokens, heading_path=path,
                   page=page, start_line=start_line, end_line=end_line)
        for index, (text, tokens, path, page, start_line, end_line) in enumerate(packer.chunks)
    ]


def _pack_prose(packer: _Packer) -> None:
    pending: list[_Piece] = []  # headings of sections with no content of their own yet
    for heading, content in _sections(packer.blocks):
        head = [packer.heading(heading)] if heading is not None else []
        if head and pending and pending[-1].path != head[0].path[: len(pending[-1].path)]:
            packer.close(carry=False)  # empty headings whose sections end here: a chunk of their own
            packer.extend(pending)
            packer.close(carry=False)
            pending = []
        pieces = [piece for index in content for piece in packer.split(index, packer.blocks[index])]
        if not pieces:
            pending += head
            continue
        headings = [*pending, *head]
        section = [*headings, *pieces]
        pending = []
        if packer.current and head and all(piece.level >= 3 for piece in headings) and packer.fits(section):
            packer.extend(section)  # a whole small subsection joins the open chunk
            continue
        packer.close(carry=False)
        for piece in section:
            if packer.current and not packer.fits([piece]):
                packer.close(carry=True)
            packer.add(piece)
    if pending:
        packer.close(carry=False)
        packer.extend(pending)


def _pack_code(packer: _Packer) -> None:
    outer: tuple[str, ...] | None = None
    for index, block in enumerate(packer.blocks):
        top = block.heading_path[:1]
        if top != outer or not top:
            packer.close(carry=False)  # each top-level definition (or run of statements) starts a chunk
        outer = top
        pieces = packer.split(index, block)
        if packer.current and (len(pieces) > 1 or not packer.fits(pieces)):
            packer.close(carry=False)  # a unit that fits alone goes whole into the next chunk
        for number, piece in enumerate(pieces):
            if number:
                packer.close(carry=True)
            packer.add(piece)


def _sections(blocks: Sequence[Block]) -> list[tuple[int | None, list[int]]]:
    """Block indices grouped by heading: (heading index or None for the preamble, content indices)."""
    sections: list[tuple[int | None, list[int]]] = [(None, [])]
    for index, block in enumerate(blocks):
        if block.kind is BlockKind.HEADING:
            sections.append((index, []))
        else:
            sections[-1][1].append(index)
    return [section for section in sections if section[0] is not None or section[1]]


class _Packer:
    """Collects pieces into chunks under the budget; renders each closed chunk."""

    def __init__(self, blocks: Sequence[Block], max_tokens: int, overlap_tokens: int, *, code: bool = False,
                 block_tokens: Sequence[int]) -> None:
        self.blocks = blocks
        self.block_tokens = block_tokens
        #: A source file's chunk text is exactly its lines: its definition path is not written into it.
        self.code = code
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.current: list[_Piece] = []
        self.overlap: _Piece | None = None
        #: (text, tokens, heading path, page, start line, end line) of each closed chunk
        self.chunks: list[tuple[str, int, tuple[str, ...], int, int, int]] = []
        #: heading path → (its prefix, the prefix's tokens)
        self._prefixes: dict[tuple[str, ...], tuple[str, int]] = {}
        #: offsets of the newlines in each block's text, to turn offsets into line numbers
        self._newlines: dict[int, list[int]] = {}

    def heading(self, index: int) -> _Piece:
        block = self.blocks[index]
        return _Piece(index, 0, len(block.text), block.text, self.block_tokens[index],
                      (*block.heading_path, block.text), block.level, block.page, block.start_line, block.end_line)

    def split(self, index: int, block: Block) -> list[_Piece]:
        """The block as pieces that fit with its prefix and an overlap."""
        budget = self.max_tokens - self.prefix_tokens(block.heading_path) - self.overlap_tokens
        spans = _pack_spans(block.text, 0, len(block.text), budget, _UNITS[block.kind], self.block_tokens[index])
        return [piece for start, end, tokens in spans if (piece := self.piece(index, start, end, tokens)) is not None]

    def piece(self, index: int, start: int, end: int, tokens: int | None = None) -> _Piece | None:
        """``text[start:end]`` of block ``index`` without its blank lines around; ``tokens``: its count if known."""
        block = self.blocks[index]
        text = block.text
        if match := _LEADING_BLANK_LINES.match(text, start, end):
            start = match.end()
        end = start + len(text[start:end].rstrip())
        if start >= end:
            return None

        def line(offset: int) -> int:
            if not block.start_line:
                return 0
            if index not in self._newlines:
                self._newlines[index] = [match.start() for match in re.finditer("\n", text)]
            return block.start_line + bisect.bisect_left(self._newlines[index], offset)

        body = text[start:end]  # stripping whitespace leaves the count as it was
        return _Piece(index, start, end, body, count_tokens(body) if tokens is None else tokens, block.heading_path,
                      0, block.page, line(start), line(end - 1))

    def prefix(self, path: tuple[str, ...]) -> str:
        return self._prefix(path)[0]

    def prefix_tokens(self, path: tuple[str, ...]) -> int:
        return self._prefix(path)[1]

    def _prefix(self, path: tuple[str, ...]) -> tuple[str, int]:
        if (known := self._prefixes.get(path)) is not None:
            return known
        found = "", 0
        if not self.code:
            for candidate in (PATH_SEPARATOR.join(path), path[-1] if path else ""):
                if (tokens := count_tokens(candidate)) <= self.max_tokens // 4:
                    found = candidate, tokens
                    break
        self._prefixes[path] = found
        return found

    def fits(self, pieces: list[_Piece]) -> bool:
        path, body = self.layout([*self.current, *pieces])
        return self.prefix_tokens(path) + sum(piece.tokens for piece in body) <= self.max_tokens

    def add(self, piece: _Piece) -> None:
        self.current.append(piece)

    def extend(self, pieces: list[_Piece]) -> None:
        self.current.extend(pieces)

    def layout(self, pieces: list[_Piece]) -> tuple[tuple[str, ...], list[_Piece]]:
        """The chunk's heading path and the pieces of its body (overlap first)."""
        lead = 0
        while lead < len(pieces) and pieces[lead].level:
            lead += 1
        rest = [*([self.overlap] if self.overlap else []), *pieces[lead:]]
        if not rest:  # only headings: they are the text
            return pieces[0].path[:-1], pieces
        paths = [piece.path[:-1] if piece.level else piece.path for piece in rest]
        path = paths[0]
        for other in paths[1:]:
            size = 0
            while size < min(len(path), len(other)) and path[size] == other[size]:
                size += 1
            path = path[:size]
        kept = [piece for piece in pieces[:lead] if path[: len(piece.path)] != piece.path]
        return path, [*kept, *rest]

    def close(self, *, carry: bool) -> None:
        """Render the open chunk; with ``carry``, the next one starts with the tail of this one."""
        if not self.current:
            self.overlap = None
            return
        path, body = self.layout(self.current)
        last = self.current[-1]
        self.overlap = self.tail(last) if carry and not last.level else None
        self.current = []
        parts: list[str] = []
        # Whitespace between pieces makes the count additive (no token spans whitespace); pieces
        # joined without it (a word cut in two) are counted again as a whole.
        additive = True
        for position, piece in enumerate(body):
            if position:
                # within one block, the source's own whitespace; between blocks, a blank line
                before = body[position - 1]
                same = before.block == piece.block and before.end <= piece.start
                if same:
                    gap = self.blocks[piece.block].text[before.end : piece.start]
                    additive = additive and gap.isspace()
                    parts.append(gap)
                elif self.code and before.end_line and piece.start_line > before.end_line:
                    parts.append("\n" * (piece.start_line - before.end_line))  # the blank lines between units
                else:
                    parts.append("\n\n")
            parts.append(piece.text)
        prefix, tokens = self._prefix(path)
        text = (prefix + "\n\n" if prefix else "") + "".join(parts)
        tokens = tokens + sum(piece.tokens for piece in body) if additive else count_tokens(text)
        pages = [piece.page for piece in body if piece.page]
        starts = [piece.start_line for piece in body if piece.start_line]
        self.chunks.append((text, tokens, path, pages[0] if pages else 0, min(starts, default=0),
                            max((piece.end_line for piece in body), default=0)))

    def tail(self, piece: _Piece) -> _Piece | None:
        """The last sentences or lines of ``piece`` that fit in the overlap budget."""
        split = _SENTENCES if self.blocks[piece.block].kind is BlockKind.PARAGRAPH else _LINES
        units = split(piece.text, 0, len(piece.text))
        start, total = len(piece.text), 0
        for unit_start, unit_end in reversed(units):
            total += count_tokens(piece.text[unit_start:unit_end])
            if total > self.overlap_tokens:
                break
            start = unit_start
        if start >= len(piece.text):
            return None
        return self.piece(piece.block, piece.start + start, piece.end)


def _pack_spans(text: str, start: int, end: int, budget: int, units: Sequence[_Splitter],
                whole: int | None = None) -> _CountedSpans:
    """Greedy: consecutive units while they fit; a unit too large alone is split by the next kind of unit.

    Each span comes with its token count. Units end after whitespace (or after a fullwidth stop,
    a token of its own), so a run of units counts the sum of its units' counts. ``whole``: the
    count of ``text[start:end]`` if known.
    """
    if whole is None:
        whole = count_tokens(text[start:end])
    if whole <= budget:
        return [(start, end, whole)]
    if not units:  # one "word" longer than the budget: no character is ever more than one token
        return [(offset, stop, count_tokens(text[offset:stop]))
                for offset in range(start, end, budget) if (stop := min(offset + budget, end))]
    spans: _CountedSpans = []
    open_start, open_end, open_tokens = start, start, 0
    for unit_start, unit_end in units[0](text, start, end):
        tokens = count_tokens(text[unit_start:unit_end])
        if open_tokens and open_tokens + tokens > budget:
            spans.append((open_start, open_end, open_tokens))
            open_start, open_tokens = unit_start, 0
        if tokens > budget:
            spans.extend(_pack_spans(text, unit_start, unit_end, budget, units[1:]))
            open_start, open_tokens = unit_end, 0
        else:
            open_tokens += tokens
        open_end = unit_end
    if open_tokens:
        spans.append((open_start, open_end, open_tokens))
    return spans


def _cut_at(pattern: re.Pattern[str]) -> _Splitter:
    """Units of ``text[start:end]`` that end where ``pattern`` matches (the match stays with the unit before)."""
    def split(text: str, start: int, end: int) -> _Spans:
        spans: _Spans = []
        for match in pattern.finditer(text, start, end):
            if match.end() > start and match.end() < end:
                spans.append((start, match.end()))
                start = match.end()
        spans.append((start, end))
        return spans
    return split


_SENTENCES = _cut_at(_SENTENCE_END)
_LINES = _cut_at(re.compile(r"\n"))
_WORDS = _cut_at(_WHITESPACE)
_UNITS: dict[BlockKind, tuple[_Splitter, ...]] = {
    BlockKind.PARAGRAPH: (_SENTENCES, _LINES, _WORDS),
    BlockKind.HEADING: (_WORDS,),
    BlockKind.LIST: (_cut_at(_LIST_ITEM), _LINES, _SENTENCES, _WORDS),
    BlockKind.TABLE: (_LINES, _WORDS),
    BlockKind.CODE: (_cut_at(_BLANK_LINES), _LINES, _WORDS),
}
