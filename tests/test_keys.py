"""The key schema: every key the service writes belongs to a family of daveloper/keys.py, and each
scope's keys share one hash slot (what a cluster needs of every script and transaction)."""

from __future__ import annotations

import re

import redis.asyncio as aioredis
from grpclib.client import Channel
from redis.crc import key_slot

from daveloper.app import App
from daveloper.infra.redis import reply_text
from daveloper.keys import FAMILIES, Keys
from generated.daveloper.v1 import SendMessage
from tests.servicers.test_agent import chat, upload_guide


def _pattern(prefix: str, family: str) -> re.Pattern[str]:
    parts = re.split(r"(<[a-z]+>)", family)
    body = "".join(".+" if part.startswith("<") else re.escape(part) for part in parts)
    return re.compile(re.escape(prefix) + body)


def _family_of(key: str, prefix: str = "dv:") -> str | None:
    for family in FAMILIES:
        if _pattern(prefix, family.pattern).fullmatch(key):
            return family.pattern
    return None


async def test_every_key_a_session_s_work_leaves_belongs_to_a_family(
    app: App, channel: Channel, token: str, redis: aioredis.Redis
) -> None:
    await upload_guide(channel, token)
    events = await chat(channel, token, SendMessage(conversation_id="c1", text="How do I point it at Redis?"))
    assert events[-1].turn_completed is not None
    keys = [reply_text(k) async for k in redis.scan_iter(count=1000)]
    assert len(keys) > 10  # a session, its documents, a conversation, its log, a tool cache, ...
    assert [k for k in keys if _family_of(k) is None] == []


def test_a_scope_s_keys_share_one_slot() -> None:
    keys = Keys()
    session = "kNj1r2Q-Zx_8aY3w0Pq9Tg"
    session_keys = [keys.session(session), keys.session_rate(session), keys.leases("turns", session),
                    keys.document(session, "doc_1"), keys.documents(session), keys.document_usage(session),
                    keys.document_version(session), keys.document_clients(session), keys.document_hidden(session),
                    keys.conversation(session, "c1"), keys.conversations(session), keys.turn(session, "c1", "t1"),
                    keys.turns(session, "c1"), keys.turn_clients(session, "c1"), keys.tool_cache(session, "ab"),
                    keys.scrape_seen(session, "cd"), keys.scrape_pages(session, "20261204"),
                    keys.session_index(session), *keys.session_fixed(session)]
    assert {key_slot(k.encode()) for k in session_keys} == {key_slot(session.encode())}
    scope = keys.scope(f"conv:{session}:c1")
    assert len({key_slot(k) for k in (scope.stream.encode(), scope.meta.encode(), scope.cancel.encode(),
                                      scope.channel, scope.tail)}) == 1
    assert key_slot(keys.work.encode()) == key_slot(keys.work_data.encode())
    # Every family that names a session carries it as the tag.
    assert all("{<session>}" in f.pattern for f in FAMILIES if "<session>" in f.pattern)
