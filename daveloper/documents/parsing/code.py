"""Source code: units (functions, classes, their methods, runs of other statements) with exact line ranges.

Every unit carries its definition path as its heading path (``("class Retrier",
"def retry")``), so a chunk of a method says which class it belongs to. A
class is cut at its methods, so the chunker can keep each small method whole.

Python is cut with :mod:`ast`: each top-level ``def``/``class`` (with its
decorators and the comment lines directly above it) is a unit, a class's
methods are units of their own (its other lines stay with the class), and the
statements between them form one unit per gap. Other languages, and Python
that does not parse or is too long for an AST, use a layout heuristic that holds for almost every
language: a top-level construct starts at an unindented line after a blank
line. A unit with an indented body (a function, a class, a struct, a nested
YAML section) stands alone; consecutive flat units (imports, constants,
one-liners) are merged, so that a run of small statements is one block and
not dozens. Within a unit with a body, a line at the body's outermost
indentation after a blank line starts a member (a method, a nested function),
labelled by its first line that is not a comment or an annotation. The chunker
packs the units of one definition together and splits only a unit that alone
exceeds its budget.
"""

from __future__ import annotations

import ast
import itertools
import re

from daveloper.documents.model import Block, BlockKind

__all__ = ["parse_code"]

#: An unindented line that continues the construct above it rather than starting a new one.
_CONTINUATION = re.compile(r"^(?:[)\]}]|(?:end|fi|done|esac|else|elif|except|finally|catch)\b)")
#: Longest definition label in a heading path.
_MAX_LABEL = 100
#: A member that starts with a statement, not a definition: it keeps the enclosing path.
_STATEMENT = re.compile(r"^(?:if|for|foreach|while|switch|match|try|return|else|do|case|with|select|go|defer|loop|"
                        r"unless|until|yield|await|throw|raise|assert|print|let|var|val)\b")
#: A comment or annotation line, which a definition's label skips.
_PREAMBLE = re.compile(r"^\s*(?://|#|/\*|\*|--|@|\[)")
#: (first line, last line, definition path) of one unit.
_Unit = tuple[int, int, tuple[str, ...]]
#: Python longer than this is cut by the layout heuristic: an AST costs up to ~1 KB of memory per source
#: character (``"a\n" * 500_000`` takes 850 MB), so a hostile upload could otherwise exhaust the server.
PYTHON_AST_MAX_CHARS = 256 * 1024


def parse_code(text: str, language: str) -> list[Block]:
    """The units of a source file as CODE blocks, each with its 1-based line range and definition path."""
    lines = text.split("\n")
    units = _python_units(text, lines) if language == "python" and len(text) <= PYTHON_AST_MAX_CHARS else None
    if units is None:
        units = _layout_units(lines)
    return [
        Block(BlockKind.CODE, "\n".join(lines[start - 1 : end]), heading_path=path, start_line=start, end_line=end)
        for start, end, path in units
    ]


def _label(line: str) -> str:
    """A definition's name for a heading path: its first line, without the body's opening brace or colon."""
    label = " ".join(line.split()).rstrip("{:").rstrip()
    return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 1] + "…"


def _python_label(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    kind = "class" if isinstance(node, ast.ClassDef) else "async def" if isinstance(node, ast.AsyncFunctionDef) \
        else "def"
    return f"{kind} {node.name}"


def _python_span(node: ast.stmt, lines: list[str], floor: int) -> tuple[int, int]:
    """A definition's lines: its decorators and the comments directly above it, and trailing indented comments."""
    decorators = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(decorator.lineno for decorator in decorators)])
    while start - 1 > floor and lines[start - 2].lstrip().startswith("#"):
        start -= 1  # a comment directly above belongs to what it describes
    end = node.end_lineno or node.lineno
    indent = len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
    while end < len(lines) and lines[end].strip() and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1  # indented trailing comments of the body are not in the AST
    return start, end


_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _python_units(text: str, lines: list[str]) -> list[_Unit] | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # not valid Python (or too deep): the layout heuristic still cuts it sensibly
    units: list[_Unit] = []
    cursor = 1
    for node in tree.body:
        if not isinstance(node, _Definition):
            continue
        start, end = _python_span(node, lines, cursor - 1)
        if gap := _trim(lines, cursor, start - 1):
            units.append((*gap, ()))
        path = (_python_label(node),)
        members = [member for member in node.body if isinstance(member, _Definition)] \
            if isinstance(node, ast.ClassDef) else []
        inner = start
        for member in members:
            member_start, member_end = _python_span(member, lines, inner - 1)
            if part := _trim(lines, inner, member_start - 1):
                units.append((*part, path))  # the class line, its docstring and attributes before a method
            units.append((member_start, member_end, (*path, _python_label(member))))
            inner = member_end + 1
        if part := _trim(lines, inner, end):
            units.append((*part, path))
        cursor = end + 1
    if gap := _trim(lines, cursor, len(lines)):
        units.append((*gap, ()))
    return units


def _layout_units(lines: list[str]) -> list[_Unit]:
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
    result: list[_Unit] = []
    for start, end in merged:
        if not _has_body(lines, start, end):
            result.append((start, end, ()))
            continue
        path = (label,) if (label := _first_label(lines, start, end)) else ()
        result.extend(_members(lines, start, end, path))
    return result


def _first_label(lines: list[str], start: int, end: int) -> str:
    """The label of the first line of a span that is not a comment or an annotation."""
    return next((_label(lines[n - 1]) for n in range(start, end + 1)
                 if lines[n - 1].strip() and not _PREAMBLE.match(lines[n - 1])), "")


def _members(lines: list[str], start: int, end: int, path: tuple[str, ...]) -> list[_Unit]:
    """A definition with a body, cut at its members: runs of the body's outermost indentation that start
    after a blank line (a method of a class, a function of a module block), each with its own label."""
    indents = [len(line) - len(line.lstrip()) for line in lines[start : end] if line.strip() and line[:1] in " \t"]
    if not indents:
        return [(start, end, path)]
    depth = min(indents)
    member_starts = [
        number for number in range(start + 1, end + 1)
        if (line := lines[number - 1]).strip() and len(line) - len(line.lstrip()) == depth
        and not lines[number - 2].strip() and not _CONTINUATION.match(line.lstrip())
    ]
    if not member_starts:
        return [(start, end, path)]
    units: list[_Unit] = []
    if head := _trim(lines, start, member_starts[0] - 1):
        units.append((*head, path))
    bounds = [*member_starts, end + 1]
    for member_start, following in itertools.pairwise(bounds):
        span = _trim(lines, member_start, following - 1)
        if span is None:
            continue
        label = _first_label(lines, *span)
        flat = not any(len(line) - len(line.lstrip()) > depth for line in lines[span[0] - 1 : span[1]] if line.strip())
        # Fields and one-liners keep the enclosing path; a member with a body gets its own label.
        own = label and not flat and not _STATEMENT.match(label)
        units.append((*span, (*path, label) if own else path))
    if all(unit[2] == path for unit in units):
        return [(start, end, path)]  # no member is a definition (a function's statements): the unit stays whole
    return units


def _has_body(lines: list[str], start: int, end: int) -> bool:
    return any(line.strip() and line[:1] in (" ", "\t") for line in lines[start - 1 : end])


def _trim(lines: list[str], start: int, end: int) -> tuple[int, int] | None:
    """The span without its leading and trailing blank lines, or ``None`` when it is all blank."""
    while start <= end and not lines[start - 1].strip():
        start += 1
    while end >= start and not lines[end - 1].strip():
        end -= 1
    return (start, end) if start <= end else None
