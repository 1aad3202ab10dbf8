"""betterproto2's field defaults, built once per message class instead of once per field per call.

``Message.__bytes__`` compares every field with its default before writing it, and
betterproto2 0.10.0 builds that default afresh for each comparison, inside
``warnings.catch_warnings()`` (a deprecated field's default may warn): about 15 us
per field, most of the cost of encoding a message of a dozen fields (a turn's record,
179 us; a ``turn_completed`` event, 147 us). Every caller of
``Message._get_field_default`` in that version only compares the default with a value
(``__bytes__``, ``__bool__``, ``__repr__``, ``is_set``).

:func:`install` replaces that method with one that keeps a field's default per class
once the original has built it, when the default is immutable (``None``, numbers,
strings, bytes, enum members); mutable defaults (lists, maps) are still built by the
original on every call, so nothing can share one. Encodings are byte for byte the same
(``tests/rpc/test_proto_defaults.py`` checks every generated message).
"""

from __future__ import annotations

import enum
from typing import Any

import betterproto2

__all__ = ["PINNED", "install", "installed"]

#: The betterproto2 version whose ``Message._get_field_default`` this replaces.
PINNED = "0.10.0"

_IMMUTABLE = (type(None), int, float, str, bytes, enum.Enum)
_MUTABLE = object()  # marks a field whose default must be built on every call
_original = betterproto2.Message._get_field_default
_defaults: dict[type, dict[str, Any]] = {}


def _get_field_default(self: betterproto2.Message, field_name: str) -> Any:
    try:
        value = _defaults[type(self)][field_name]
    except KeyError:
        value = _original(self, field_name)
        _defaults.setdefault(type(self), {})[field_name] = value if isinstance(value, _IMMUTABLE) else _MUTABLE
        return value
    return _original(self, field_name) if value is _MUTABLE else value


def install() -> None:
    """Use the per-class defaults in this process (idempotent)."""
    betterproto2.Message._get_field_default = _get_field_default  # type: ignore[method-assign]


def installed() -> bool:
    return betterproto2.Message._get_field_default is _get_field_default
