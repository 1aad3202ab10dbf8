"""Per-class field defaults for betterproto2: every generated message encodes, compares and prints as before."""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Iterator
from typing import Any

import betterproto2
import pytest

import generated.daveloper.v1 as v1
from daveloper.rpc import proto_defaults

STOCK = proto_defaults._original


def _messages() -> list[type[betterproto2.Message]]:
    return [cls for _, cls in inspect.getmembers(v1, inspect.isclass)
            if issubclass(cls, betterproto2.Message) and cls is not betterproto2.Message]


def _sample(cls: type[betterproto2.Message]) -> Iterator[betterproto2.Message]:
    """The message with its defaults, then with every scalar field (one per oneof group) set."""
    yield cls()
    values: dict[str, Any] = {}
    groups: set[str] = set()
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.repeated or meta.proto_type == betterproto2.TYPE_MESSAGE or meta.proto_type == betterproto2.TYPE_MAP:
            continue
        if meta.group:
            if meta.group in groups:
                continue
            groups.add(meta.group)
        kind = meta.proto_type
        if kind == betterproto2.TYPE_STRING:
            values[name] = "x"
        elif kind == betterproto2.TYPE_BYTES:
            values[name] = b"x"
        elif kind == betterproto2.TYPE_BOOL:
            values[name] = True
        elif kind in (betterproto2.TYPE_DOUBLE, betterproto2.TYPE_FLOAT):
            values[name] = 1.5
        elif kind == betterproto2.TYPE_ENUM:
            enum = cls._betterproto.cls_by_field[name]
            values[name] = list(enum)[-1]
        else:
            values[name] = 7
    yield cls(**values)


def _observe(message: betterproto2.Message) -> tuple[bytes, bool, str, tuple[bool, ...]]:
    names = message._betterproto.sorted_field_names
    return bytes(message), bool(message), repr(message), tuple(message.is_set(name) for name in names)


@pytest.fixture
def stock() -> Iterator[None]:
    """The stock method for the test, whatever was installed before; restored after."""
    before = betterproto2.Message._get_field_default
    betterproto2.Message._get_field_default = STOCK  # type: ignore[method-assign]
    yield
    betterproto2.Message._get_field_default = before  # type: ignore[method-assign]


def test_the_replaced_method_is_the_pinned_versions() -> None:
    assert importlib.metadata.version("betterproto2") == proto_defaults.PINNED
    assert STOCK.__qualname__ == "Message._get_field_default"


@pytest.mark.usefixtures("stock")
def test_every_generated_message_encodes_compares_and_prints_as_before() -> None:
    samples = [sample for cls in _messages() for sample in _sample(cls)]
    assert len(samples) > 100
    before = [_observe(sample) for sample in samples]
    proto_defaults.install()
    assert proto_defaults.installed()
    assert [_observe(sample) for sample in samples] == before
    assert [type(sample).parse(bytes(sample)) for sample in samples] == samples


@pytest.mark.usefixtures("stock")
def test_immutable_defaults_are_kept_per_class_and_mutable_ones_built_each_time() -> None:
    proto_defaults.install()
    message = v1.Turn()
    assert message._get_field_default("user_text") == ""
    assert message._get_field_default("state") == v1.TurnState(0)
    assert proto_defaults._defaults[v1.Turn]["user_text"] == ""
    assert proto_defaults._defaults[v1.Turn]["state"] is v1.TurnState(0)

    first = message._get_field_default("citations")
    first.append(v1.Citation())
    assert message._get_field_default("citations") == []
    assert proto_defaults._defaults[v1.Turn]["citations"] is proto_defaults._MUTABLE
    assert bytes(v1.Turn()) == b""
