"""Opaque page tokens for List RPCs (an offset the client must not build itself)."""

from __future__ import annotations

import base64

from daveloper.errors import InvalidArgument

__all__ = ["next_page_token", "page_offset"]

_MAX_OFFSET_DIGITS = 12


def next_page_token(offset: int, *, more: bool) -> str:
    """The token of the page starting at ``offset``, or "" when there is no more."""
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=") if more else ""


def page_offset(token: str) -> int:
    """The offset a token stands for; "" is the first page."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        # An offset is a list index: digits beyond any real one (e.g. 40) fail in Redis, not here.
        if kind != "o" or not value.isdigit() or len(value) > _MAX_OFFSET_DIGITS:
            raise ValueError(text)
        return int(value)
    except ValueError:
        raise InvalidArgument.field("page_token", "is not a token this server issued") from None
