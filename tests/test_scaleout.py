"""Scale-out on loopback: two gRPC instances and two edges as separate processes on one Valkey.

Browser-style WebSocket clients chat through both edges while the model (a
local OpenAI-compatible server) streams slowly. One gRPC instance is killed
with SIGKILL in the middle of a turn: the clients' turns end (completed, or
failed with OWNER_LOST by the survivor once the dead instance's lease lapsed)
and they go on chatting on the survivor. Then a replacement joins and the
survivor is drained with SIGTERM while turns run: every event reaches the
clients, in order, with nothing missing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.agent.openai_server import FakeOpenAI, Script
from tests.edge.client import JSON, Client
from tests.processes import gone_within
from tests.test_cli import free_port

pytestmark = pytest.mark.timeout(240)

CHAT = "/daveloper.v1.AgentService/Chat"
WATCH = "/daveloper.v1.AgentService/Watch"
LIST = "/daveloper.v1.AgentService/ListConversations"
LEASE_SECONDS = 2.0
#: A turn of this script streams for about 3 s.
SLOW = Script(text=[f"word{i} " for i in range(30)], delay=0.1)


@dataclass
class Instance:
    name: str
    role: str
    process: asyncio.subprocess.Process
    addr: str

    def stop(self, signum: int) -> None:
        self.process.send_signal(signum)


@dataclass
class Cluster:
    redis_url: str
    llm_url: str
    root: Path
    instances: list[Instance] = field(default_factory=list)

    def env(self, name: str, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
        env.update({
            "DAVELOPER_ROLE": role, "DAVELOPER_REDIS_URL": self.redis_url, "DAVELOPER_INSTANCE_ID": name,
            "DAVELOPER_DATA_DIR": str(self.root / name), "DAVELOPER_LEASE_SECONDS": str(LEASE_SECONDS),
            "DAVELOPER_DRAIN_SECONDS": "20", "DAVELOPER_LLM_PROVIDER": "openai",
            "DAVELOPER_LLM_BASE_URL": self.llm_url, "DAVELOPER_LLM_API_KEY": "sk-test",
            "DAVELOPER_COALESCE_CHARS": "0", "DAVELOPER_SECRET_KEY": "scale-out-test-key",
        })
        return env

    async def start(self, name: str, role: str) -> Instance:
        addr = f"127.0.0.1:{free_port()}"
        flag = "--edge-addr" if role == "edge" else "--grpc-addr"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daveloper", "serve", flag, addr,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=self.env(name, role))
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode()  # the first line says it is listening
        assert addr in line, f"{name} did not start: {line!r}"
        instance = Instance(name, role, process, addr)
        self.instances.append(instance)
        return instance

    async def close(self) -> None:
        for instance in self.instances:
            if instance.process.returncode is None:
                instance.process.kill()
            await instance.process.wait()


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        server.fallback = SLOW
        yield server


@pytest.fixture
async def cluster(redis_url: str, llm: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Cluster]:
    running = Cluster(redis_url, llm.url, tmp_path)
    try:
        yield running
    finally:
        await running.close()


async def registered(redis: aioredis.Redis, *addrs: str) -> None:
    """Wait until exactly ``addrs`` are in the registry."""
    async with asyncio.timeout(30):
        while sorted(m.decode() for m in await redis.zrange("dv:instances", 0, -1)) != sorted(addrs):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def ready(http: aiohttp.ClientSession, edge: Instance) -> None:
    async with asyncio.timeout(30):
        while True:
            async with http.get(f"http://{edge.addr}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.2)


class ChatClient:
    """One browser-style client: a socket to one edge, one conversation, the events it has seen."""

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self.client = client
        self.conversation = f"conv-{name}"
        self.events: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, edge: Instance, name: str) -> ChatClient:
        async with http.post(f"http://{edge.addr}/daveloper.v1.SessionService/CreateSession", json={}) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["token"]
        ws = await http.ws_connect(f"http://{edge.addr}/ws", protocols=(JSON,))
        client = Client(ws, JSON)
        await client.send({"type": "hello", "token": token})
        assert (await client.recv())["type"] == "welcome"
        return cls(name, client)

    async def send(self, text: str) -> int:
        """Start a turn on a Chat stream; the stream's id."""
        stream_id = next(self._ids)
        await self.client.send({"type": "open", "id": stream_id, "method": CHAT, "credit": 10_000, "message": {
            "send": {"conversationId": self.conversation, "text": text, "clientMessageId": f"{text}-{stream_id}"}}})
        return stream_id

    async def watch(self) -> int:
        """Resume the conversation after the last event seen, on a Watch stream; the stream's id."""
        stream_id = next(self._ids)
        after = max(self.events, default=0)
        await self.client.send({"type": "open", "id": stream_id, "method": WATCH, "credit": 10_000,
                                "message": {"conversationId": self.conversation, "afterSeq": str(after)},
                                "end": True})
        return stream_id

    async def started(self, stream_id: int) -> dict[str, Any]:
        """Read until the stream's turnStarted event; that event."""
        while True:
            frame = await self._next(stream_id)
            assert frame["type"] != "close", frame
            if frame["type"] == "msg" and "turnStarted" in frame["message"]["event"]:
                return dict(frame["message"]["event"])

    async def until_turn_end(self, stream_id: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Read the stream until a turn ends (that event) or the stream closes (its status)."""
        while True:
            frame = await self._next(stream_id)
            if frame["type"] == "close":
                return None, frame["status"]
            if frame["type"] == "msg":
                event = frame["message"]["event"]
                if "turnCompleted" in event or "turnFailed" in event:
                    await self.client.send({"type": "cancel", "id": stream_id})
                    return event, None

    async def finish_turn(self, stream_id: int) -> dict[str, Any]:
        """Follow the turn to its end, resuming with Watch whenever a stream fails; its final event."""
        while True:
            event, status = await self.until_turn_end(stream_id)
            if event is not None:
                return event
            assert status is not None
            assert status["code"] == "unavailable", status
            stream_id = await self.watch()

    async def _next(self, stream_id: int) -> dict[str, Any]:
        pending = self.client.pending.get(stream_id)
        frame = pending.pop(0) if pending else await self._recv_for(stream_id)
        if frame["type"] == "msg":
            event = frame["message"]["event"]
            seq = int(event["seq"])
            assert self.events.get(seq, event) == event, f"{self.name}: seq {seq} seen with different content"
            self.events[seq] = event
        return frame

    async def _recv_for(self, stream_id: int) -> dict[str, Any]:
        while True:
            frame = await self.client.recv()
            assert frame["type"] != "socket-closed", f"{self.name}: socket closed: {frame}"
            if frame.get("id") == stream_id:
                return frame
            if "id" in frame:
                self.client.pending.setdefault(frame["id"], []).append(frame)


def text_of(events: dict[int, dict[str, Any]], turn_id: str) -> str:
    return "".join(e["tokenDelta"]["text"] for _, e in sorted(events.items())
                   if e.get("turnId") == turn_id and "tokenDelta" in e)


async def test_sigkill_mid_turn_then_sigterm_drain_lose_no_event(cluster: Cluster, redis: aioredis.Redis) -> None:
    a = await cluster.start("grpc-a", "grpc")
    b = await cluster.start("grpc-b", "grpc")
    edges = [await cluster.start("edge-1", "edge"), await cluster.start("edge-2", "edge")]
    await registered(redis, a.addr, b.addr)
    grpc = {a.name: a, b.name: b}
    async with aiohttp.ClientSession() as http:
        for edge in edges:
            await ready(http, edge)
        clients = [await ChatClient.connect(http, edges[i % 2], f"c{i}") for i in range(4)]

        # -- SIGKILL an instance while every client has a turn streaming --------------------
        streams = [await c.send("first") for c in clients]
        starts = [await c.started(s) for c, s in zip(clients, streams, strict=True)]
        owners = {s["turnStarted"]["owner"] for s in starts}
        victim = grpc[starts[0]["turnStarted"]["owner"]]
        survivor = b if victim is a else a
        victim.stop(signal.SIGKILL)
        assert gone_within(victim.process.pid, 10)
        finals = [await c.finish_turn(s) for c, s in zip(clients, streams, strict=True)]
        for start, final in zip(starts, finals, strict=True):
            assert final["turnId"] == start["turnId"]
            if start["turnStarted"]["owner"] == victim.name:
                failure = final["turnFailed"]["failure"]
                assert failure["reason"] == "OWNER_LOST", final
                assert failure["code"] == 14, final  # UNAVAILABLE
            else:
                assert final["turnCompleted"]["text"] == "".join(SLOW.text)
        assert victim.name in owners
        await registered(redis, survivor.addr)

        # Everyone goes on chatting, on the survivor.
        streams = [await c.send("second") for c in clients]
        for client, stream_id in zip(clients, streams, strict=True):
            assert (await client.started(stream_id))["turnStarted"]["owner"] == survivor.name
            final = await client.finish_turn(stream_id)
            assert final["turnCompleted"]["text"] == "".join(SLOW.text)

        # -- a replacement joins; SIGTERM drains the survivor while turns stream ------------
        replacement = await cluster.start("grpc-c", "grpc")
        await registered(redis, survivor.addr, replacement.addr)
        streams = [await c.send("third") for c in clients]
        starts = [await c.started(s) for c, s in zip(clients, streams, strict=True)]
        survivor.stop(signal.SIGTERM)
        finals = [await c.finish_turn(s) for c, s in zip(clients, streams, strict=True)]
        for final in finals:
            assert final["turnCompleted"]["text"] == "".join(SLOW.text), final  # drained, not interrupted
        assert await asyncio.wait_for(survivor.process.wait(), 30) == 0

        # No event lost: what each client saw is the whole log, 1..n, equal to a fresh replay.
        for client in clients:
            seqs = sorted(client.events)
            assert seqs == list(range(1, len(seqs) + 1)), f"{client.name} missed events"
            replay = ChatClient(client.name, client.client)
            replay.conversation = client.conversation
            replay._ids = itertools.count(1000)
            stream_id = await replay.watch()
            while len(replay.events) < len(client.events):
                frame = await replay._next(stream_id)
                assert frame["type"] != "close", frame
            await replay.client.send({"type": "cancel", "id": stream_id})
            assert replay.events == client.events
            assert text_of(client.events, starts[clients.index(client)]["turnId"]) == "".join(SLOW.text)

        # Unary calls keep working through both edges, served by the replacement alone now.
        await registered(redis, replacement.addr)
        for edge in edges:
            async with http.post(f"http://{edge.addr}/daveloper.v1.SessionService/CreateSession",
                                 json={}) as response:
                assert response.status == 200
