"""The text format of numbered passages in a tool result, shared by the tools and the models.

A ``search_documents`` result is a list of numbered passages, one block each,
blocks separated by one blank line::

    [1] guide.md > Configuration
    Set the DAVELOPER_REDIS_URL variable to point at your Redis.

    [2] deploy.md > Docker
    ...

The number is the citation marker a model writes after a claim (``[1]``). To keep
the block separator unambiguous, :func:`format_passages` folds blank lines inside a
passage's text into single line breaks and a title onto one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["NO_PASSAGES", "Passage", "format_passages", "parse_passages"]

#: What :func:`format_passages` says when there is nothing to quote.
NO_PASSAGES = "No matching passages were found in the session's documents."

_BLANK_LINES = re.compile(r"\n\s*\n")
_HEADER = re.compile(r"\[(\d+)\] ?(.*)")
_BLOCK_START = re.compile(r"\n\n(?=\[\d+\])")


class Passage(NamedTuple):
    """One numbered passage: ``(number, title, text)``."""

    number: int
    title: str
    text: str


def format_passages(passages: Sequence[tuple[int, str, str]]) -> str:
    """The tool-result text for ``(number, title, text)`` passages (:data:`NO_PASSAGES` when empty)."""
    if not passages:
        return NO_PASSAGES
    blocks = []
    for number, title, text in passages:
        one_line_title = " ".join(title.split())
        body = _BLANK_LINES.sub("\n", text.strip().replace("\r\n", "\n"))
        blocks.append(f"[{number}] {one_line_title}\n{body}")
    return "\n\n".join(blocks)


def parse_passages(text: str) -> list[Passage]:
    """The passages in a :func:`format_passages` text; ``[]`` when it holds none (e.g. :data:`NO_PASSAGES`)."""
    passages = []
    for block in _BLOCK_START.split(text.strip().replace("\r\n", "\n")):
        header, _, body = block.partition("\n")
        match = _HEADER.fullmatch(header.strip())
        if match is None:
            continue
        passages.append(Passage(int(match.group(1)), match.group(2).strip(), body.strip()))
    return passages
