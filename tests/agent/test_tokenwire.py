"""Token-delta events encoded with upb are the bytes betterproto2 produces, and parse back."""

from __future__ import annotations

import datetime

import pytest

from daveloper.agent.tokenwire import TokenEvents
from generated.daveloper.v1 import ChatEvent, TokenDelta

_TIMES = [
    datetime.datetime(2026, 12, 5, 13, 40, 1, 123456, tzinfo=datetime.UTC),
    datetime.datetime(2026, 12, 5, 13, 40, 1, tzinfo=datetime.UTC),
    datetime.datetime(1999, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
]


@pytest.mark.parametrize("text", ["hello", "", "ünïcödé ✓ 🚀", "x" * 10_000, "line\nbreak\x00nul"])
@pytest.mark.parametrize("created", _TIMES)
def test_the_bytes_are_betterproto2s(text: str, created: datetime.datetime) -> None:
    encoded = TokenEvents().encode("c_0123", "t_4567", created, text)
    assert encoded == bytes(ChatEvent(conversation_id="c_0123", turn_id="t_4567", create_time=created,
                                      token_delta=TokenDelta(text=text)))
    event = ChatEvent.parse(encoded)
    assert event.token_delta is not None
    assert event.token_delta.text == text
    assert event.create_time == created
