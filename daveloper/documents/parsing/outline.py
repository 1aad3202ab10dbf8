"""The heading trail that gives every block its ``heading_path``."""

from __future__ import annotations

from daveloper.documents.model import Block, BlockKind

__all__ = ["Outline"]


class Outline:
    """Tracks the enclosing headings while a parser walks a document top to bottom."""

    def __init__(self) -> None:
        self._trail: list[tuple[int, str]] = []
        self.first_h1 = ""

    @property
    def path(self) -> tuple[str, ...]:
        """The headings enclosing the next content block, outermost first."""
        return tuple(text for _, text in self._trail)

    def heading(self, text: str, level: int, *, page: int = 0, start_line: int = 0, end_line: int = 0) -> Block:
        """Enter a heading: it closes every open heading of the same or a deeper level."""
        level = min(max(level, 1), 6)
        while self._trail and self._trail[-1][0] >= level:
            self._trail.pop()
        block = Block(
            BlockKind.HEADING, text, heading_path=self.path, page=page,
            start_line=start_line, end_line=end_line, level=level,
        )
        self._trail.append((level, text))
        if level == 1 and not self.first_h1:
            self.first_h1 = text
        return block

    def block(self, kind: BlockKind, text: str, *, page: int = 0, start_line: int = 0, end_line: int = 0) -> Block:
        """A content block under the current headings."""
        return Block(kind, text, heading_path=self.path, page=page, start_line=start_line, end_line=end_line)
