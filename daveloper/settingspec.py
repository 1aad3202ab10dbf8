"""How a setting is declared, read from text and checked (:class:`SettingSpec`, :func:`setting`).

:class:`daveloper.config.Settings` declares each field with :func:`setting`;
the field's annotation picks the parser that turns an environment variable's
text into its value (``str | None`` reads as ``str``), and its spec's bounds,
choices and check validate the value however it arrived. Besides the built-in
types, settings read :class:`Address` (``HOST:PORT``) and rates checked by
:func:`parse_rate` (``N/min``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daveloper.errors import ConfigError

__all__ = ["Address", "SettingSpec", "parse_rate", "setting"]


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A TCP listen address."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, name: str = "address") -> Address:
        """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{name}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_PERIODS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str, *, name: str = "rate") -> tuple[int, float]:
    """``"30/min"`` → ``(30, 60.0)``: calls allowed (also the burst) and the period in seconds."""
    count, sep, period = text.strip().partition("/")
    if not sep or not count.strip().isdigit() or int(count) <= 0 or period.strip().lower() not in _PERIODS:
        raise ConfigError(f"{name}: expected N/s, N/min or N/h, got {text!r}")
    return int(count), _PERIODS[period.strip().lower()]


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _number(kind: type[int] | type[float]) -> Callable[[str, str], object]:
    def parse(text: str, variable: str) -> object:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{variable} must be a number, got {text!r}") from None
    return parse


def _flag(text: str, variable: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"{variable} must be true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes", "on")


#: How a variable's text becomes a value, by the field's annotation (``str | None`` as ``str``).
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "str": lambda text, variable: text,
    "int": _number(int),
    "float": _number(float),
    "bool": _flag,
    "Path": lambda text, variable: Path(text).expanduser(),
    "Address": lambda text, variable: Address.parse(text, name=variable),
    "tuple[str, ...]": lambda text, variable: _items(text),
    "tuple[Address, ...]": lambda text, variable: tuple(Address.parse(a, name=variable) for a in _items(text)),
}


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """What one setting accepts and how the README describes it (see :func:`setting`)."""

    doc: str
    #: The default as the README shows it, where the value alone does not say it (computed, or unset).
    shown: str | None = None
    #: Numbers must be above ``gt`` / at least ``ge``.
    gt: float | None = None
    ge: float | None = None
    #: The values a string may take (after ``normalize``).
    choices: tuple[str, ...] = ()
    #: Applied to a value read from the environment (``str.lower`` for names given in any case).
    normalize: Callable[[Any], Any] | None = None
    #: Raises ``ConfigError`` for a value the other bounds cannot describe.
    check: Callable[[str, Any], None] | None = None

    def parse(self, text: str, variable: str, annotation: str) -> object:
        value = _PARSERS[annotation.removesuffix(" | None")](text, variable)
        return self.normalize(value) if self.normalize is not None else value

    def validate(self, name: str, value: Any) -> None:
        if value is None:
            return
        if self.gt is not None and value <= self.gt:
            raise ConfigError(f"{name} must be positive" if self.gt == 0 else f"{name} must be above {self.gt:g}")
        if self.ge is not None and value < self.ge:
            raise ConfigError(f"{name} must not be negative" if self.ge == 0
                              else f"{name} must be at least {self.ge:g}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{name} must be one of {', '.join(c for c in self.choices if c)}, got {value!r}")
        if self.check is not None:
            self.check(name, value)

    def shown_default(self, default: object) -> str:
        if self.shown is not None:
            return self.shown
        if default is None or default == ():
            return "unset"
        if isinstance(default, bool):
            return f"`{str(default).lower()}`"
        if isinstance(default, float):
            return f"`{default:g}`"
        return f"`{default}`"


def setting(default: Any = dataclasses.MISSING, *, doc: str, factory: Callable[[], Any] | None = None,
            shown: str | None = None, gt: float | None = None, ge: float | None = None,
            choices: tuple[str, ...] = (), normalize: Callable[[Any], Any] | None = None,
            check: Callable[[str, Any], None] | None = None) -> Any:
    """Declare a :class:`~daveloper.config.Settings` field: its default (or ``factory``), bounds, and README text."""
    spec = SettingSpec(doc, shown, gt, ge, choices, normalize, check)
    if factory is not None:
        return field(default_factory=factory, metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})
