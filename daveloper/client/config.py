"""``daveloper config``: read and change runtime options in Redis (every instance applies them within a second).

It talks to Redis directly, so it runs where the servers' Redis is reachable:
``DAVELOPER_REDIS_URL``, or the embedded Valkey's socket under the data dir.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import redis.asyncio as aioredis

from daveloper.config import Settings
from daveloper.errors import ConfigError
from daveloper.keys import Keys
from daveloper.runtime import OPTIONS, defaults, list_options, set_option, unset_option

__all__ = ["config_command", "redis_url"]


def redis_url(settings: Settings) -> str:
    """Where the servers keep their state: ``DAVELOPER_REDIS_URL``, else the embedded Valkey of the data dir."""
    if settings.redis_url:
        return settings.redis_url
    embedded = Path(settings.data_dir).resolve() / "valkey" / "valkey.sock"
    if embedded.exists():
        return f"unix://{embedded}"
    raise ConfigError("set DAVELOPER_REDIS_URL to the servers' Redis (no embedded Valkey runs under "
                      f"{settings.data_dir})")


async def config_command(action: str, name: str | None, value: str | None, env: Mapping[str, str],
                         out: TextIO) -> int:
    """``list`` (every option: value, default, meaning), ``get NAME``, ``set NAME VALUE``, ``unset NAME``."""
    settings = Settings.from_env(env)
    client = aioredis.Redis.from_url(redis_url(settings), socket_timeout=5, socket_connect_timeout=5)
    by = f"cli@{socket.gethostname()}"
    keys = Keys(settings.redis_prefix)
    try:
        if action == "set":
            assert name is not None
            assert value is not None
            stored = await set_option(client, name, value, by=by, keys=keys)
            print(f"{name} = {stored} (every instance applies it within a second)", file=out)
            return 0
        if action == "unset":
            assert name is not None
            removed = await unset_option(client, name, by=by, keys=keys)
            print(f"{name}: back to its default" if removed else f"{name} was not set", file=out)
            return 0
        overrides = await list_options(client, keys=keys)
        fallback = defaults(settings)
        for option in OPTIONS.values():
            if action == "get" and option.name != name:
                continue
            shown = overrides.get(option.name)
            state = f"{shown} (set)" if shown is not None else f"{fallback[option.name]} (default)"
            print(f"{option.name:<24} {state:<20} {option.doc}", file=out)
        if action == "get" and name not in OPTIONS:
            raise ConfigError(f"no runtime option {name!r}; options: {', '.join(OPTIONS)}")
        return 0
    finally:
        await client.aclose()
