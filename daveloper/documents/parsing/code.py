"""Source code: top-level units (functions, classes, runs of other statements) with exact line ranges.

Python is cut with :mod:`ast`: each top-level ``def``/``class`` (with its
decorators and the comment lines directly above it) is a unit, and the
statements between them form one unit per gap. Other languages, and Python
that does not parse or is too long for an AST, use a layout heuristic that holds for almost every
language: a top-level construct starts at an unindented line after a blank
line. A unit with an indented body (a function, a class, a struct, a nested
YAML section) stands alone; consecutive flat units (imports, constants,
one-liners) are merged, so that a run of small statements is one block and
not dozens. The chunker splits a unit that exceeds its budget.
"""

from __future__ import annotations

import ast
import re

from daveloper.documents.model import Block, BlockKind

__all__ = ["parse_code"]

#: An unindented line that continues the construct above it rather than starting a new one.
_CONTINUATION = re.compile(r"^(?:[)\]}]|(?:end|fi|done|esac|else|elif|except|finally|catch)\b)")
#: Python longer than this is cut by the layout heuristic: an AST costs up to ~1 KB of memory per source
#: character (``"a\n" * 500_000`` takes 850 MB), so a hostile upload could otherwise exhaust the server.
PYTHON_AST_MAX_CHARS = 256 * 1024


def parse_code(text: str, language: str) -> list[Block]:
    """The top-level units of a source file as CODE blocks, each with its 1-based line range."""
    lines = text.split("\n")
    spans = _python_units(text, lines) if language == "python" and len(text) <= PYTHON_AST_MAX_CHARS else None
    if spans is None:
        spans = _layout_units(lines)
    return [
        Block(BlockKind.CODE, "\n".join(lines[start - 1 : end]), start_line=start, end_line=end)
        for start, end in spans
    ]


def _python_units(text: str, lines: list[str]) -> list[tuple[int, int]] | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # not valid Python (or too deep): the layout heuristic still cuts it sensibly
    definitions: list[tuple[int, int]] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
        floor = definitions[-1][1] if definitions else 0
        while start - 1 > floor and lines[start - 2].lstrip().startswith("#"):
            start -= 1  # a comment directly above belongs to what it describes
        end = node.end_lineno or node.lineno
        while end < len(lines) and lines[end].strip() and lines[end][:1] in (" ", "\t"):
            end += 1  # indented trailing comments of the body are not in the AST
        definitions.append((start, end))
    spans: list[tuple[int, int]] = []
    cursor = 1
    for start, end in [*definitions, (len(lines) + 1, len(lines) + 1)]:
        if gap := _trim(lines, cursor, start - 1):
            spans.append(gap)
        if start <= len(lines):
            spans.append((start, end))
        cursor = end + 1
    return spans


def _layout_units(lines: list[str]) -> list[tuple[int, int]]:
    starts = [
        number for number, line in enumerate(lines, start=1)
        if line.strip() and line[:1] not in (" ", "\t") and not _CONTINUATION.match(line)
        and (number == 1 or not lines[number - 2].strip())
    ]
    if not starts or _trim(lines, 1, starts[0] - 1):
        starts.insert(0, 1)  # text before the first unit start (an indented file) is a unit too
    units = [
        span for start, following in zip(starts, [*starts[1:], len(lines) + 1], strict=True)
        if (span := _trim(lines, start, following - 1))
    ]
    merged: list[tuple[int, int]] = []
    for start, end in units:
        flat = not _has_body(lines, start, end)
        if merged and flat and not _has_body(lines, *merged[-1]):
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _has_body(lines: list[str], start: int, end: int) -> bool:
    return any(line.strip() and line[:1] in (" ", "\t") for line in lines[start - 1 : end])


def _trim(lines: list[str], start: int, end: int) -> tuple[int, int] | None:
    """The span without its leading and trailing blank lines, or ``None`` when it is all blank."""
    while start <= end and not lines[start - 1].strip():
        start += 1
    while end >= start and not lines[end - 1].strip():
        end -= 1
    return (start, end) if start <= end else None
