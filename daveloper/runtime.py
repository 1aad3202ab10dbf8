"""Runtime options: feature switches and limits an operator changes through Redis, on every instance, live.

The options and their defaults are fixed here (:data:`OPTIONS`; the defaults of
limits come from :class:`~daveloper.config.Settings`). An override is one field
of the Redis hash ``<prefix>config`` (``dv:config``), written only through :func:`set_option`, which
validates it (so a bad value never reaches an instance) and records who changed
what in the audit log. Every instance re-reads the hash every ``interval``
seconds (1 s), applies what changed and logs each change, old and new value;
so a change is in force everywhere within about a second, and one missed by an
instance (Redis briefly down) is picked up at its next read. No pub/sub push on
top: at one ``HGETALL`` of a small hash a second, it would only save that second,
at the price of a subscriber connection per instance to keep and resubscribe.

``daveloper config list|get|set|unset`` is the operator's command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from daveloper.audit import AuditLog
from daveloper.config import Settings, parse_rate
from daveloper.errors import ConfigError, DaveloperError, InvalidArgument
from daveloper.infra.redis import redis_call, reply_text
from daveloper.keys import DEFAULT_KEYS, Keys

__all__ = ["CONFIG_KEY", "OPTIONS", "Option", "RuntimeConfig", "list_options", "set_option", "unset_option"]

log = logging.getLogger("daveloper.config")

CONFIG_KEY = DEFAULT_KEYS.config


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    #: ``switch`` (on/off), ``count`` (a whole number in ``low..high``) or ``rate`` (``N/s``, ``N/min``, ``N/h``).
    kind: str
    doc: str
    low: int = 0
    high: int = 0

    def parse(self, raw: str) -> bool | int | str:
        """The value ``raw`` stands for; ``InvalidArgument`` if it is not one this option takes."""
        text = raw.strip().lower()
        if self.kind == "switch":
            if text in ("on", "true", "1", "yes"):
                return True
            if text in ("off", "false", "0", "no"):
                return False
            raise InvalidArgument.field(self.name, f"expected on or off, got {raw!r}")
        if self.kind == "count":
            if not text.isdigit() or not self.low <= int(text) <= self.high:
                raise InvalidArgument.field(self.name, f"expected a whole number from {self.low} to {self.high}, "
                                                       f"got {raw!r}")
            return int(text)
        try:
            parse_rate(text, name=self.name)
        except ConfigError as exc:
            raise InvalidArgument.field(self.name, exc.message) from None
        return text


def _options(*options: Option) -> dict[str, Option]:
    return {option.name: option for option in options}


OPTIONS = _options(
    Option("chat", "switch", "chat turns (off: Chat refuses new turns with FAILED_PRECONDITION, FEATURE_DISABLED)"),
    Option("uploads", "switch", "document uploads"),
    Option("scraping", "switch", "crawl and GitHub jobs, and the agent's scrape_url and github_repo tools"),
    Option("tool.search_documents", "switch", "the agent's search_documents tool"),
    Option("tool.scrape_url", "switch", "the agent's scrape_url tool"),
    Option("tool.github_repo", "switch", "the agent's github_repo tool"),
    Option("max_tool_rounds", "count", "tool-call rounds per turn", 0, 20),
    Option("quota_concurrent_turns", "count", "turns one session may run at once", 1, 1000),
    Option("rate_chat_turns", "rate", "chat turns per session"),
    Option("rate_uploads", "rate", "uploads per session"),
    Option("rate_scrapes", "rate", "scrape and GitHub jobs per session"),
    Option("rate_calls", "rate", "other calls per session"),
    Option("rate_sessions", "rate", "new sessions per client address"),
)


def _option(name: str) -> Option:
    option = OPTIONS.get(name)
    if option is None:
        raise InvalidArgument.field("name", f"no runtime option {name!r}; options: {', '.join(OPTIONS)}")
    return option


def defaults(settings: Settings) -> dict[str, bool | int | str]:
    """Every option's value when nothing is overridden: switches on, limits from ``settings``."""
    values: dict[str, bool | int | str] = {name: True for name, o in OPTIONS.items() if o.kind == "switch"}
    for name, option in OPTIONS.items():
        if option.kind != "switch":
            values[name] = getattr(settings, name)
    return values


Listener = Callable[[str, bool | int | str], None]
#: Agent tools that fetch from the web: off with ``scraping`` as well as with their own switch.
_WEB_TOOLS = frozenset({"scrape_url", "github_repo"})


class RuntimeConfig:
    """This instance's view of the options: defaults, plus the overrides in Redis as last read."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, interval: float = 1.0,
                 keys: Keys = DEFAULT_KEYS) -> None:
        self._redis = redis
        self._key = keys.config
        self._defaults = defaults(settings)
        self._values = dict(self._defaults)
        self._instance = settings.instance_id
        self._interval = interval
        self._listeners: list[Listener] = []
        #: Stored values that do not parse (written around :func:`set_option`), already warned about.
        self._invalid: dict[str, str] = {}

    def __getitem__(self, name: str) -> bool | int | str:
        return self._values[name]

    def enabled(self, name: str) -> bool:
        return bool(self._values[name])

    def count(self, name: str) -> int:
        return int(self._values[name])

    def tool_enabled(self, tool: str) -> bool:
        """Whether the agent may offer and run ``tool``: its switch, and for web tools ``scraping`` too."""
        return self.enabled(f"tool.{tool}") and (tool not in _WEB_TOOLS or self.enabled("scraping"))

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(name, value)`` after an option's value changes (an unset one goes back to its default)."""
        self._listeners.append(listener)

    async def refresh(self) -> None:
        """Read the overrides and apply what changed."""
        raw = await redis_call(self._redis.hgetall(self._key))
        overrides: dict[str, bool | int | str] = {}
        invalid: dict[str, str] = {}
        for key, stored in raw.items():
            name, text = reply_text(key), reply_text(stored)
            if name in OPTIONS:
                try:
                    overrides[name] = OPTIONS[name].parse(text)
                except InvalidArgument:
                    invalid[name] = text
                    if self._invalid.get(name) != text:  # once, not at every read
                        log.warning("ignoring invalid runtime option %s=%r", name, text)
        self._invalid = invalid
        for name, default in self._defaults.items():
            value = overrides.get(name, default)
            old = self._values[name]
            if value != old:
                self._values[name] = value
                log.info("runtime option %s changed from %s to %s on instance %s", name, old, value, self._instance,
                         extra={"option": name, "old": str(old), "new": str(value)})
                for listener in self._listeners:
                    listener(name, value)

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except (DaveloperError, aioredis.RedisError) as exc:
                log.warning("runtime options unreadable, keeping the last ones: %s", exc)
            await asyncio.sleep(self._interval)


async def set_option(redis: aioredis.Redis, name: str, raw: str, *, by: str,
                     keys: Keys = DEFAULT_KEYS) -> bool | int | str:
    """Validate and store an override; every instance applies it within a second. Returns the value."""
    value = _option(name).parse(raw)
    text = raw.strip().lower()
    await redis_call(redis.hset(keys.config, name, text))
    await AuditLog(redis, retention_seconds=30 * 24 * 3600, instance=by, keys=keys).record(
        "config.changed", session_id="", option=name, value=text)
    return value


async def unset_option(redis: aioredis.Redis, name: str, *, by: str, keys: Keys = DEFAULT_KEYS) -> bool:
    """Remove an override (the default applies again); whether there was one."""
    _option(name)
    removed = bool(await redis_call(redis.hdel(keys.config, name)))
    if removed:
        await AuditLog(redis, retention_seconds=30 * 24 * 3600, instance=by, keys=keys).record(
            "config.changed", session_id="", option=name, value="(default)")
    return removed


async def list_options(redis: aioredis.Redis, *, keys: Keys = DEFAULT_KEYS) -> Mapping[str, str]:
    """The overrides stored now, by name."""
    raw = await redis_call(redis.hgetall(keys.config))
    return {reply_text(k): reply_text(v) for k, v in sorted(raw.items())}
