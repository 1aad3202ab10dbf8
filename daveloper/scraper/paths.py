"""Choosing files from a repository tree by glob: code paths the user names, and documentation."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from daveloper.scraper.github import DEFAULT_MAX_FILE_SIZE, TreeEntry

__all__ = ["docs_files", "select_files"]

_DOC_SUFFIXES = ("md", "markdown", "mdx", "rst", "txt", "adoc")
_DOC_PATTERNS = tuple(f"{place}*.{suffix}" for place in ("", "docs/**/", "doc/**/") for suffix in _DOC_SUFFIXES)


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path segments match glob segments: ``**`` spans directories, the rest is ``fnmatch`` per segment."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # Zero or more directories before the rest; a final "**" needs at least one segment.
        return any(_matches(parts[i:], rest) for i in range(len(parts) + 1)) if rest else bool(parts)
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _matches(parts[1:], rest)


def select_files(
    entries: Iterable[TreeEntry],
    include: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    max_size: int | None = DEFAULT_MAX_FILE_SIZE,
) -> list[TreeEntry]:
    """The blobs whose path matches an ``include`` glob and no ``exclude`` glob, at most ``max_size`` bytes.

    Globs are matched against the whole path: ``src/**/*.py`` matches ``src/app.py`` and
    ``src/pkg/util.py``; ``*.md`` only root files; ``docs/**`` everything under ``docs/``.
    Within a segment, ``fnmatch`` rules apply (``*``, ``?``, ``[seq]``, ``[!seq]``; ``*`` matches
    dotfiles too), case-sensitively like git. ``max_size=None`` keeps every size.
    """
    included = [p.strip("/").split("/") for p in include]
    excluded = [p.strip("/").split("/") for p in exclude]
    selected = []
    for entry in entries:
        if entry.type != "blob" or (max_size is not None and (entry.size or 0) > max_size):
            continue
        parts = entry.path.split("/")
        if any(_matches(parts, p) for p in included) and not any(_matches(parts, p) for p in excluded):
            selected.append(entry)
    return selected


def docs_files(entries: Iterable[TreeEntry], *, max_size: int | None = DEFAULT_MAX_FILE_SIZE) -> list[TreeEntry]:
    """Documentation: Markdown, reStructuredText, AsciiDoc and text files at the root or under ``docs/``/``doc/``.

    Root ``requirements*.txt`` and ``constraints*.txt`` are dependency lists, not documentation.
    """
    return select_files(entries, _DOC_PATTERNS, exclude=("requirements*.txt", "constraints*.txt"),
                        max_size=max_size)
