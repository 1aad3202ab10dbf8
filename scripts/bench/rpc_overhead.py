"""What the Daveloper runtime layer costs on top of bare grpclib.

Two servers in one process and one uvloop loop do the same work:

* **bare**: generated betterproto2 ``XxxServiceBase`` subclasses on a grpclib ``Server``;
* **daveloper**: ``daveloper.rpc.Servicer`` subclasses with the ``Interceptor``
  (request id, message-size limit, error mapping, drain tracking, trailers) and
  bearer-token authentication (HMAC verification; the production store's Redis
  EXISTS lookup is left out so this measures the framework, not Redis).

Workloads, through the same grpclib client: unary round trips sequentially (c=1)
and from 8 concurrent tasks, bidi ping-pong on one ``AgentService/Chat`` stream,
and bidi pipelined (send N, receive N). Rounds alternate bare/daveloper and the
median round is reported.

    .venv/bin/python -m scripts.bench.rpc_overhead [--quick] [--seconds S] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.server import Server

from daveloper.rpc import Call, Interceptor, Principal, Servicer
from daveloper.sessions import TokenSigner
from generated.daveloper.v1 import (
    AgentServiceBase,
    ChatEvent,
    ChatRequest,
    ChatResponse,
    Collection,
    ListCollectionsRequest,
    ListCollectionsResponse,
    SendMessage,
    TokenDelta,
    VectorServiceBase,
)
from scripts.bench._stats import median, summary_us, table

COLLECTIONS = ListCollectionsResponse(collections=[Collection(name="docs", dimension=384, point_count=1200)])


def reply_for(request: ChatRequest, seq: int) -> ChatResponse:
    assert request.send is not None
    return ChatResponse(event=ChatEvent(seq=seq, conversation_id="c1", turn_id="t1",
                                        token_delta=TokenDelta(text=request.send.text)))


class BareVectors(VectorServiceBase):
    async def list_collections(self, message: ListCollectionsRequest) -> ListCollectionsResponse:
        return COLLECTIONS


class BareAgent(AgentServiceBase):
    async def chat(self, messages: AsyncIterator[ChatRequest]) -> AsyncIterator[ChatResponse]:
        seq = 0
        async for request in messages:
            seq += 1
            yield reply_for(request, seq)


class SignedTokenAuth:
    """Verifies the bearer token's HMAC and expiry, as production does before its Redis lookup."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    async def authenticate(self, metadata: Any) -> Principal:
        return Principal(self._signer.verify(metadata["authorization"].removeprefix("Bearer ")))


class Vectors(Servicer):
    base = VectorServiceBase

    async def ListCollections(self, request: ListCollectionsRequest, call: Call[Any, Any]) -> ListCollectionsResponse:
        return COLLECTIONS


class Agent(Servicer):
    base = AgentServiceBase

    async def Chat(self, call: Call[ChatRequest, ChatResponse]) -> None:
        seq = 0
        async for request in call:
            seq += 1
            await call.send(reply_for(request, seq))


async def start(server: Server) -> int:
    await server.start("127.0.0.1", 0)
    return int(server._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def unary(channel: Channel, metadata: dict[str, str], seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with channel.request("/daveloper.v1.VectorService/ListCollections", Cardinality.UNARY_UNARY,
                                       ListCollectionsRequest, ListCollectionsResponse,
                                       timeout=10, metadata=metadata) as stream:
                await stream.send_message(ListCollectionsRequest(), end=True)
                await stream.recv_message()
                await stream.recv_trailing_metadata()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rate": len(latencies) / elapsed, **summary_us(latencies)}


async def bidi_ping_pong(channel: Channel, metadata: dict[str, str], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM,
                               ChatRequest, ChatResponse, timeout=seconds + 30, metadata=metadata) as stream:
        request = ChatRequest(send=SendMessage(conversation_id="c1", text="hello there, token"))
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await stream.send_message(request)
            await stream.recv_message()
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
        await stream.end()
        assert await stream.recv_message() is None
    return {"rate": len(latencies) / elapsed, **summary_us(latencies)}


async def bidi_pipelined(channel: Channel, metadata: dict[str, str], count: int) -> dict[str, Any]:
    async with channel.request("/daveloper.v1.AgentService/Chat", Cardinality.STREAM_STREAM,
                               ChatRequest, ChatResponse, timeout=120, metadata=metadata) as stream:
        request = ChatRequest(send=SendMessage(conversation_id="c1", text="hello there, token"))
        started = time.perf_counter()
        await stream.send_request()

        async def send() -> None:
            for _ in range(count):
                await stream.send_message(request)
            await stream.end()

        sender = asyncio.create_task(send())
        received = 0
        while await stream.recv_message() is not None:
            received += 1
        await sender
        elapsed = time.perf_counter() - started
    assert received == count
    return {"rate": count / elapsed}


Workload = Callable[[Channel, dict[str, str]], Awaitable[dict[str, Any]]]


async def run(seconds: float, rounds: int, pipelined: int) -> dict[str, Any]:
    signer = TokenSigner(b"bench-key")
    token = signer.issue("bench-session", int(time.time()) + 3600)
    auth = SignedTokenAuth(signer)
    bare = Server([BareVectors(), BareAgent()])
    ours = Server([Vectors(auth=auth), Agent(auth=auth)])
    Interceptor(max_message_bytes=4 * 1024 * 1024).install(ours)
    channels = {"bare": Channel("127.0.0.1", await start(bare)),
                "daveloper": Channel("127.0.0.1", await start(ours))}
    metadata = {"bare": {"authorization": f"Bearer {token}"}, "daveloper": {"authorization": f"Bearer {token}"}}
    workloads: dict[str, Workload] = {
        "unary c=1": lambda ch, md: unary(ch, md, seconds, 1),
        "unary c=8": lambda ch, md: unary(ch, md, seconds, 8),
        "bidi ping-pong": lambda ch, md: bidi_ping_pong(ch, md, seconds),
        "bidi pipelined": lambda ch, md: bidi_pipelined(ch, md, pipelined),
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for name, workload in workloads.items():
            for which in channels:  # warm-up
                await workload(channels[which], metadata[which])
            per_server: dict[str, list[dict[str, Any]]] = {"bare": [], "daveloper": []}
            for round_ in range(rounds):
                order = ["bare", "daveloper"] if round_ % 2 == 0 else ["daveloper", "bare"]
                for which in order:
                    per_server[which].append(await workload(channels[which], metadata[which]))
            results[name] = per_server
    finally:
        for channel in channels.values():
            channel.close()
        for server in (bare, ours):
            server.close()
            await server.wait_closed()
    return results


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose throughput is the median (so its percentiles belong together)."""
    rate = median([r["rate"] for r in rounds])
    return min(rounds, key=lambda r: abs(r["rate"] - rate))


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, per_server in results.items():
        bare, ours = median_round(per_server["bare"]), median_round(per_server["daveloper"])
        unit = "req/s" if name.startswith("unary") else "msg/s"
        row = [name, f"{bare['rate']:,.0f} {unit}", f"{ours['rate']:,.0f} {unit}", f"{ours['rate'] / bare['rate']:.2f}"]
        if "p50" in bare:
            row += [f"{bare['p50']:.0f} / {bare['p99']:.0f}", f"{ours['p50']:.0f} / {ours['p99']:.0f}",
                    f"{ours['p50'] / bare['p50']:.2f}"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    headers = ["workload", "bare grpclib", "daveloper", "throughput ratio (daveloper/bare)",
               "bare p50 / p99 µs", "daveloper p50 / p99 µs", "p50 ratio (daveloper/bare)"]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each timed run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per server")
    parser.add_argument("--pipelined", type=int, default=20_000, help="messages per pipelined bidi run")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.pipelined = 0.3, 1, 1000
    results = uvloop.run(run(args.seconds, args.rounds, args.pipelined))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python {platform.python_version()}, uvloop, one process; {args.rounds} alternating rounds of "
          f"{args.seconds:g}s (pipelined: {args.pipelined} msgs); median round shown")
    print(report(results))
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
