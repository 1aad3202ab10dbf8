"""The chat page behind an edge with two gRPC instances: the one running the answer drops off mid-stream.

Each instance is reached through a TCP proxy; the test cuts the proxy of the
instance whose Chat stream is open while the model (a local OpenAI-compatible
server) is still streaming, and refuses new connections to it. The page's
socket stays up, its Chat stream ends ``unavailable``, and the page resumes
the turn with ``Watch`` on the other instance: the whole answer is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from daveloper.app import open_app
from daveloper.config import Address, Settings
from daveloper.gateway import open_gateway
from tests.agent.openai_server import FakeOpenAI, Script
from tests.browser.test_page import scenario

pytestmark = pytest.mark.timeout(90)

ANSWER = Script(text=[f"piece{i} " for i in range(25)], delay=0.12)


class Proxy:
    """A TCP proxy to one address that can be cut: open connections reset, new ones refused."""

    def __init__(self, target: Address) -> None:
        self.target = target
        self.cut = False
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> Address:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return Address("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
            self._pipes.difference_update(pipes)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def sever(self) -> None:
        """Stop accepting (connections are refused) and reset every open connection."""
        self.cut = True
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()


@contextlib.asynccontextmanager
async def proxied(target: Address) -> AsyncIterator[tuple[Proxy, Address]]:
    proxy = Proxy(target)
    addr = await proxy.start()
    try:
        yield proxy, addr
    finally:
        await proxy.close()


async def test_the_page_resumes_a_turn_on_another_server(
        settings: Settings, redis: aioredis.Redis, chromium: Path, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    async with FakeOpenAI(api_key="sk-test") as llm:
        llm.fallback = ANSWER
        grpc = settings.replace(role="grpc", llm_provider="openai", llm_base_url=llm.url, llm_api_key="sk-test",
                                coalesce_chars=0)
        async with (open_app(grpc.replace(data_dir=tmp_path / "a", instance_id="a")) as a,
                    open_app(grpc.replace(data_dir=tmp_path / "b", instance_id="b")) as b,
                    proxied(a.grpc_addr) as (proxy_a, via_a), proxied(b.grpc_addr) as (proxy_b, via_b)):
            edge = settings.replace(role="edge", redis_url=None, upstreams=(via_a, via_b),
                                    edge_addr=Address("127.0.0.1", 0))
            async with open_gateway(edge) as gateway:
                proxies = {via_a: proxy_a, via_b: proxy_b}

                async def cut_the_server_mid_answer() -> Address:
                    async with asyncio.timeout(30):
                        while not llm.requests:  # noqa: ASYNC110 - polling the fake model's log
                            await asyncio.sleep(0.05)
                        await asyncio.sleep(0.6)  # a few pieces of the answer are on the page
                    (busy,) = [b.addr for b in gateway.edge.state.upstream.backends if b.streams]
                    await proxies[busy].sever()
                    return busy

                result, severed = await asyncio.gather(scenario("failover", gateway.edge),
                                                       cut_the_server_mid_answer())

    turn = result["turn"]
    assert turn["state"] == "completed", turn
    assert turn["answer"] == "".join(ANSWER.text)
    assert result["socketsOpened"] == 0  # the socket never dropped: only the stream did
    [watch] = result["watchFrames"]
    assert watch["message"]["conversationId"] == result["conversationId"]
    assert int(watch["message"]["afterSeq"]) > 1  # resumed after what it had shown, not from the start
    assert severed in (via_a, via_b)
