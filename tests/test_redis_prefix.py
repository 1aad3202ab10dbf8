"""DAVELOPER_REDIS_PREFIX: two deployments on one Redis, each under its own prefix, see nothing of each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.app import open_app
from daveloper.config import Settings
from daveloper.infra.redis import reply_text
from generated.daveloper.v1 import CreateSessionRequest, GetSessionRequest, SendMessage, SessionServiceStub
from tests.grpc_helpers import bearer
from tests.servicers.test_agent import chat, upload_guide
from tests.test_keys import _family_of

pytestmark = pytest.mark.timeout(60)


async def test_two_prefixes_on_one_redis_keep_apart(settings: Settings, redis: aioredis.Redis,
                                                    tmp_path: Path) -> None:
    tokens: dict[str, str] = {}
    def tenant(name: str) -> Settings:
        return settings.replace(redis_prefix=f"tenant-{name}:", data_dir=tmp_path / name, instance_id=name,
                                parse_workers=1)

    async with open_app(tenant("a")) as a, open_app(tenant("b")) as b:
        channels = {"tenant-a:": Channel(a.grpc_addr.host, a.grpc_addr.port),
                    "tenant-b:": Channel(b.grpc_addr.host, b.grpc_addr.port)}
        try:
            for prefix, channel in channels.items():
                tokens[prefix] = (await SessionServiceStub(channel).create_session(CreateSessionRequest(),
                                                                                    timeout=5)).token
                await upload_guide(channel, tokens[prefix])
                events = await chat(channel, tokens[prefix], SendMessage(conversation_id="c1", text="Redis?"))
                assert events[-1].turn_completed is not None
            # Each signs with its own key, kept under its own prefix: one's token means nothing to the other.
            with pytest.raises(GRPCError) as refused:
                await SessionServiceStub(channels["tenant-b:"]).get_session(
                    GetSessionRequest(), timeout=5, metadata=bearer(tokens["tenant-a:"]))
            assert refused.value.status is Status.UNAUTHENTICATED
        finally:
            for channel in channels.values():
                channel.close()

    keys = [reply_text(k) async for k in redis.scan_iter(count=1000)]
    for prefix in ("tenant-a:", "tenant-b:"):
        mine = [k for k in keys if k.startswith(prefix)]
        assert len(mine) > 10, prefix  # the signing key, a session, its documents, a conversation, its log, ...
        assert [k for k in mine if _family_of(k, prefix) is None] == []
    assert [k for k in keys if not k.startswith(("tenant-a:", "tenant-b:"))] == []
