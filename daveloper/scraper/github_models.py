"""What the GitHub client returns: plain frozen records of the REST API's answers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Issue", "RepoFile", "Repository", "Tree", "TreeEntry"]


@dataclass(frozen=True)
class Repository:
    """What ``GET /repos/{owner}/{repo}`` says about a repository."""

    full_name: str
    description: str
    default_branch: str
    html_url: str
    stars: int
    forks: int
    open_issues: int  # GitHub counts open pull requests here too
    language: str
    topics: tuple[str, ...]
    license: str  # SPDX id, "" when none is detected
    private: bool
    archived: bool
    pushed_at: str


@dataclass(frozen=True)
class RepoFile:
    """A file's bytes at a ref. ``text`` decodes UTF-8; callers that must guess encodings use ``data``."""

    path: str
    data: bytes
    sha: str
    size: int
    html_url: str

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a git tree: ``type`` is ``blob`` (file), ``tree`` (directory) or ``commit`` (submodule)."""

    path: str
    type: str
    sha: str
    size: int | None  # blobs only


@dataclass(frozen=True)
class Tree:
    """A recursive git tree. ``truncated``: GitHub cut the listing (over 100,000 entries or 7 MB)."""

    sha: str
    entries: tuple[TreeEntry, ...]
    truncated: bool


@dataclass(frozen=True)
class Issue:
    """An issue (never a pull request)."""

    number: int
    title: str
    body: str
    state: str
    html_url: str
    author: str
    labels: tuple[str, ...]
    comments: int
    created_at: str
    updated_at: str
    closed_at: str | None
