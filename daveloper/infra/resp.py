"""Redis commands packed by hiredis: the asyncio client's wire encoding in C, not Python.

redis-py's synchronous client packs each command with ``hiredis.pack_command`` when
hiredis is installed; its asyncio connections always use the pure-Python packer, which
encodes argument by argument: 16 us for an event-log append (11 arguments) against 4 us
in hiredis, on every command the server sends (about 50 to start a chat turn, two or
three per streamed event). The asyncio cluster client builds its own connections of a
fixed class, so no connection class can be passed in; :func:`install` replaces the
method on redis-py's asyncio ``AbstractConnection``, for every client of the process.

The bytes on the wire are the same (``tests/infra/test_resp.py`` compares them for every
argument type a command takes). Arguments hiredis does not take (``bytearray``, and
the ``bool`` and ``None`` that redis-py refuses with ``DataError``) go through
redis-py's own packer. Strings are encoded as UTF-8, which is what this project's
clients use (none sets ``encoding``).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

__all__ = ["install", "installed"]

_stock = AbstractConnection.pack_command


def _pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
    first = args[0]
    # A command name of several words ("CONFIG GET") is sent as several arguments, as redis-py does.
    if isinstance(first, str):
        args = (*first.encode().split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError:
        return _stock(self, *args)


def install() -> None:
    """Pack every asyncio client's commands with hiredis in this process (idempotent)."""
    AbstractConnection.pack_command = _pack_command  # type: ignore[method-assign]


def installed() -> bool:
    return AbstractConnection.pack_command is _pack_command
