"""What the parser refuses: the bounds it works within and the reasons it gives.

Every refusal is an :class:`~daveloper.errors.InvalidArgument` whose ``reason``
is one of :class:`Reason` and whose field violation names the part of the
upload at fault: ``chunk`` (the content) or ``header.media_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from daveloper.errors import InvalidArgument

__all__ = ["CONTENT", "MEDIA_TYPE", "ParseLimits", "Reason", "refuse"]

#: Field paths of ``UploadRequest`` that a refusal points at.
CONTENT = "chunk"
MEDIA_TYPE = "header.media_type"


class Reason(StrEnum):
    """Stable ``ErrorInfo.reason`` values of a refused document."""

    EMPTY_DOCUMENT = "EMPTY_DOCUMENT"
    """No bytes, or only whitespace."""
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    """Binary content that is not a PDF or DOCX (images, archives, executables, legacy .doc)."""
    CORRUPT_DOCUMENT = "CORRUPT_DOCUMENT"
    """Looks like a PDF or DOCX but cannot be read as one."""
    ENCRYPTED_DOCUMENT = "ENCRYPTED_DOCUMENT"
    """Needs a password to open."""
    NO_TEXT = "NO_TEXT"
    """Readable, but has no extractable text (a scanned PDF, an HTML page with no content)."""
    DOCUMENT_TOO_LARGE = "DOCUMENT_TOO_LARGE"
    """More pages, or more unpacked bytes, than :class:`ParseLimits` allows."""


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on the work one document may cause, beyond its upload size."""

    #: Pages of a PDF; a longer one is refused rather than cut short silently.
    max_pages: int = 2_000
    #: Sum of the uncompressed sizes of a DOCX's zip entries (python-docx loads them all into memory).
    max_unpacked_bytes: int = 256 * 1024 * 1024
    #: Entries in a DOCX zip.
    max_zip_entries: int = 10_000


def refuse(reason: Reason, problem: str, *, field: str = CONTENT) -> InvalidArgument:
    """The error for a document refused for ``reason``; ``problem`` says what is wrong, for humans."""
    return InvalidArgument(f"{field}: {problem}", violations=[(field, problem)], reason=reason.value)
