"""Failover: the primary that holds a conversation's slot is killed in the middle of a turn.

Its replica is promoted (the nodes' timeout is one second), the turn's writes
that fail meanwhile are retried, the live tail re-subscribes on the new
primary and re-reads the stream, and the turn ends — completed, or failed with
a reason. Every event the client was sent is in the log the new primary
serves, at the same seq: an event reaches a client only after the append that
stored it returned, and the replica had it by then (see docs/operations.md,
"Scaling out", for what asynchronous replication can and cannot promise).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from daveloper.agent.running import conversation_scope
from daveloper.keys import Keys
from generated.daveloper.v1 import ChatEvent, ChatRequest, ChatResponse, SendMessage, WatchRequest
from tests.agent.openai_server import FakeOpenAI, Script
from tests.cluster.valkey_cluster import ValkeyCluster
from tests.grpc_helpers import bearer
from tests.servicers.test_agent_openai import llm, settings  # noqa: F401  (the streaming model's fixtures)

pytestmark = pytest.mark.timeout(60)

WORDS = [f"word{i} " for i in range(40)]


@pytest.fixture
def valkey_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """A cluster of this test's own: it loses a node."""
    cluster = ValkeyCluster(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(valkey_cluster: ValkeyCluster) -> str:
    return valkey_cluster.url


def _done(event: ChatEvent) -> bool:
    return event.turn_completed is not None or event.turn_failed is not None


async def test_a_turn_rides_out_the_failover_of_its_conversation_s_primary(
    channel: Channel, token: str, llm: FakeOpenAI, valkey_cluster: ValkeyCluster  # noqa: F811
) -> None:
    llm.enqueue(Script(text=WORDS, delay=0.05))  # about two seconds of answer
    session_id = token.split(".")[1]
    stream_key = Keys().scope(conversation_scope(session_id, "failover")).stream
    seen: list[ChatEvent] = []
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM, ChatRequest,
                               ChatResponse, timeout=45, metadata=bearer(token)) as stream:
        await stream.send_message(ChatRequest(send=SendMessage(conversation_id="failover", text="go")))
        while sum(1 for e in seen if e.token_delta is not None) < 3:
            seen.append((await stream.recv_message()).event)
        victim = valkey_cluster.primary_for(stream_key)
        await asyncio.to_thread(victim.kill)
        killed_at = time.monotonic()
        while not seen or not _done(seen[-1]):
            response = await stream.recv_message()
            assert response is not None, "the Chat stream ended before the turn did"
            seen.append(response.event)
        await stream.cancel()
    assert valkey_cluster.primary_for(stream_key) is not victim  # the replica took over
    last = seen[-1]
    if last.turn_failed is not None:
        assert last.turn_failed.failure is not None
        assert last.turn_failed.failure.reason
    else:
        assert last.turn_completed is not None
        assert last.turn_completed.text == "".join(WORDS)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), "events missing or repeated"

    # The log the promoted replica serves holds every event the client was sent, at its seq.
    stored: list[ChatEvent] = []
    async with channel.request("/daveloper.v1.AgentService/Watch", Cardinality.UNARY_STREAM, WatchRequest,
                               ChatResponse, timeout=15, metadata=bearer(token)) as watch:
        await watch.send_message(WatchRequest(conversation_id="failover", after_seq=0), end=True)
        while not stored or not _done(stored[-1]):
            stored.append((await watch.recv_message()).event)
        await watch.cancel()
    assert stored == seen
    print(f"turn ended {time.monotonic() - killed_at:.1f}s after the kill: {last.turn_failed or 'completed'}")
