"""What the Daveloper runtime layer costs on top of bare grpclib.

Two servers in one process and one uvloop loop do the same work:

* **bare**: generated betterproto2 ``XxxServiceBase`` subclasses on a grpclib ``Server``;
* **daveloper**: ``daveloper.rpc.Servicer`` subclasses with the ``Interceptor``
  (request id, message-size limit, error mapping, drain tracking, ``x-request-id``
  trailer) and the production ``SessionStore`` authenticator (bearer-token parse,
  HMAC and expiry check) whose Redis is replaced by an in-memory set, so this
  measures the framework and not a Redis round trip.

Workloads, through the same grpclib client on loopback: unary
``VectorService/ListCollections`` sequentially (c=1) and from 8 concurrent tasks;
``AgentService/Chat`` bidi ping-pong on one stream (send one ``SendMessage``, wait
for its ``ChatEvent`` token delta) and pipelined (a sender task keeps 32 requests
unanswered while a receiver task reads). Every workload runs a warm-up per server,
then rounds alternating the order (bare, daveloper / daveloper, bare); each figure
is the median over rounds; cyclic-GC collections during the timed runs are counted
too (totals over all rounds). After timing, an untimed tracemalloc pass measures memory per call. ``--json``
keeps the four workload names as its top-level keys (``tests/test_bench.py`` relies
on them).

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/rpc_overhead.py [--quick] [--seconds S] [--rounds N] [--json]
    .venv/bin/python -m scripts.bench.rpc_overhead [same flags]
    .venv/bin/python scripts/bench/rpc_overhead.py --profile daveloper   # cProfile of unary c=1
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import cProfile
import datetime
import gc
import io
import json
import platform
import pstats
import resource
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.server import Server

from daveloper.keys import DEFAULT_KEYS
from daveloper.rpc import Call, Interceptor, Servicer
from daveloper.sessions import SessionStore, TokenSigner
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
from scripts.bench._stats import summary_us, table

SERVERS = ("bare", "daveloper")
UNARY = "/daveloper.v1.VectorService/ListCollections"
CHAT = "/daveloper.v1.AgentService/Chat"
TIMEOUT = 30.0  # every client call carries a deadline
SESSION_ID = "bench-session"

COLLECTIONS = ListCollectionsResponse(collections=[Collection(name="docs", dimension=384, point_count=1200)])
CHAT_REQUEST = ChatRequest(send=SendMessage(conversation_id="7c9e6679-7425-40de-944b-e07fc1f90ae7",
                                            text="hello there, token"))
TURN_ID = "t_91b2c3d4e5f6a7b8"


def chat_reply(request: ChatRequest, seq: int) -> ChatResponse:
    """One token-delta event per request, built the same way by both servers."""
    assert request.send is not None
    return ChatResponse(event=ChatEvent(
        seq=seq,
        conversation_id=request.send.conversation_id,
        turn_id=TURN_ID,
        create_time=datetime.datetime.now(datetime.UTC),
        token_delta=TokenDelta(text=request.send.text),
    ))


# -- bare grpclib: the generated service bases ------------------------------------------------


class BareVectors(VectorServiceBase):
    async def list_collections(self, message: ListCollectionsRequest) -> ListCollectionsResponse:
        return COLLECTIONS


class BareAgent(AgentServiceBase):
    async def chat(self, messages: AsyncIterator[ChatRequest]) -> AsyncIterator[ChatResponse]:
        seq = 0
        async for request in messages:
            seq += 1
            yield chat_reply(request, seq)


# -- the Daveloper runtime ---------------------------------------------------------------------


class InMemoryRedis:
    """Stands in for Redis in ``SessionStore.authenticate``: answers its one HMGET from memory, without I/O."""

    def __init__(self, keys: set[str]) -> None:
        self._keys = keys
        self._active = time.time()  # recent, so the once-a-minute activity write never runs

    def register_script(self, script: str) -> Any:
        async def run(*, keys: list[str], args: list[Any]) -> int:
            return 1
        return run

    async def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        if key not in self._keys:
            return [None] * len(fields)
        values = {"last_active": repr(self._active).encode(), "expires_at": str(int(time.time()) + 3600).encode()}
        return [values.get(field) for field in fields]


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
            await call.send(chat_reply(request, seq))


# -- workloads (client side) -----------------------------------------------------------------


async def unary_once(channel: Channel, metadata: dict[str, str]) -> None:
    async with channel.request(UNARY, Cardinality.UNARY_UNARY, ListCollectionsRequest, ListCollectionsResponse,
                               timeout=TIMEOUT, metadata=metadata) as stream:
        await stream.send_message(ListCollectionsRequest(), end=True)
        assert await stream.recv_message() is not None
        await stream.recv_trailing_metadata()


async def unary(channel: Channel, metadata: dict[str, str], seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await unary_once(channel, metadata)
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rate": len(latencies) / elapsed, "n": len(latencies), **summary_us(latencies)}


async def bidi_ping_pong(channel: Channel, metadata: dict[str, str], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    async with channel.request(CHAT, Cardinality.STREAM_STREAM, ChatRequest, ChatResponse,
                               timeout=seconds + TIMEOUT, metadata=metadata) as stream:
        await stream.send_request()
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await stream.send_message(CHAT_REQUEST)
            assert await stream.recv_message() is not None
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
        await stream.end()
        assert await stream.recv_message() is None
        await stream.recv_trailing_metadata()
    return {"rate": len(latencies) / elapsed, "n": len(latencies), **summary_us(latencies)}


async def bidi_pipelined(channel: Channel, metadata: dict[str, str], seconds: float,
                         depth: int = 32) -> dict[str, float]:
    """A sender task keeps up to ``depth`` requests unanswered on one stream while this task reads the answers."""
    async with channel.request(CHAT, Cardinality.STREAM_STREAM, ChatRequest, ChatResponse,
                               timeout=seconds + TIMEOUT, metadata=metadata) as stream:
        await stream.send_request()
        sent = received = 0
        credit = asyncio.Event()

        async def send() -> None:
            nonlocal sent
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                while sent - received >= depth:
                    credit.clear()
                    await credit.wait()
                await stream.send_message(CHAT_REQUEST)
                sent += 1
            await stream.end()

        started = time.perf_counter()
        sender = asyncio.create_task(send())
        while await stream.recv_message() is not None:
            received += 1
            credit.set()
        elapsed = time.perf_counter() - started
        await sender
        await stream.recv_trailing_metadata()
    assert received == sent, (received, sent)
    return {"rate": received / elapsed, "n": received}


Workload = Callable[[Channel, dict[str, str], float], Awaitable[dict[str, float]]]


class GcWatch:
    """Counts cyclic-GC collections per generation and the time they take, while installed."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.runs[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._started

    async def measure(self, workload: Awaitable[dict[str, float]]) -> dict[str, float]:
        self.runs, self.seconds = [0, 0, 0], 0.0
        gc.callbacks.append(self)
        try:
            result = await workload
        finally:
            gc.callbacks.remove(self)
        return {**result, "gc0": self.runs[0], "gc1": self.runs[1], "gc2": self.runs[2], "gc_ms": self.seconds * 1e3}


WORKLOADS: dict[str, Workload] = {
    "unary c=1": lambda ch, md, s: unary(ch, md, s, 1),
    "unary c=8": lambda ch, md, s: unary(ch, md, s, 8),
    "bidi ping-pong": bidi_ping_pong,
    "bidi pipelined": bidi_pipelined,
}


# -- memory (untimed) ------------------------------------------------------------------------


async def unary_memory(channel: Channel, metadata: dict[str, str], calls: int) -> dict[str, float]:
    """tracemalloc, whole process (client + server): peak above baseline during one call, and growth per call."""
    for _ in range(20):
        await unary_once(channel, metadata)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        peaks: list[int] = []
        for _ in range(calls):
            current, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            await unary_once(channel, metadata)
            peaks.append(tracemalloc.get_traced_memory()[1] - current)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"peak_bytes_per_call": statistics.median(peaks), "retained_bytes_per_call": (after - before) / calls}


async def bidi_memory(channel: Channel, metadata: dict[str, str], messages: int) -> dict[str, float]:
    """tracemalloc on an open Chat stream: peak above baseline per ping-pong, and growth per message."""
    async with channel.request(CHAT, Cardinality.STREAM_STREAM, ChatRequest, ChatResponse,
                               timeout=TIMEOUT, metadata=metadata) as stream:
        for _ in range(20):
            await stream.send_message(CHAT_REQUEST)
            await stream.recv_message()
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            peaks: list[int] = []
            for _ in range(messages):
                current, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                await stream.send_message(CHAT_REQUEST)
                await stream.recv_message()
                peaks.append(tracemalloc.get_traced_memory()[1] - current)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await stream.end()
        await stream.recv_message()
    return {"peak_bytes_per_call": statistics.median(peaks), "retained_bytes_per_call": (after - before) / messages}


# -- driver ----------------------------------------------------------------------------------


async def start(server: Server) -> Channel:
    await server.start("127.0.0.1", 0)
    port = int(server._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return Channel("127.0.0.1", port)


async def run(seconds: float, rounds: int, memory_calls: int, profile: str | None,
              request_id: str | None) -> dict[str, Any]:
    signer = TokenSigner(b"bench-signing-key")
    token = signer.issue(SESSION_ID, int(time.time()) + 3600)
    store = SessionStore(InMemoryRedis({DEFAULT_KEYS.session(SESSION_ID)}), signer)  # type: ignore[arg-type]
    bare = Server([BareVectors(), BareAgent()])
    ours = Server([Vectors(auth=store), Agent(auth=store)])
    Interceptor(max_message_bytes=4 * 1024 * 1024).install(ours)
    channels = {"bare": await start(bare), "daveloper": await start(ours)}
    metadata = {"authorization": f"Bearer {token}"}  # both servers receive the same headers
    if request_id is not None:
        metadata["x-request-id"] = request_id
    results: dict[str, Any] = {}
    try:
        if profile is not None:
            await unary(channels[profile], metadata, min(seconds, 0.5), 1)
            profiler = cProfile.Profile()
            profiler.enable()
            await unary(channels[profile], metadata, seconds, 1)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            return {"profile": out.getvalue()}
        warm_up = min(0.5, seconds / 2)
        gc_watch = GcWatch()
        for name, workload in WORKLOADS.items():
            phase = time.perf_counter()
            for which in SERVERS:
                await workload(channels[which], metadata, warm_up)
            per_server: dict[str, list[dict[str, float]]] = {which: [] for which in SERVERS}
            for round_ in range(rounds):
                for which in SERVERS if round_ % 2 == 0 else reversed(SERVERS):
                    per_server[which].append(await gc_watch.measure(workload(channels[which], metadata, seconds)))
            results[name] = {
                **per_server,
                "median": {which: {key: statistics.median(r[key] for r in per_server[which])
                                   for key in per_server[which][0]} for which in SERVERS},
                "wall_seconds": time.perf_counter() - phase,
            }
        phase = time.perf_counter()
        results["unary c=1"]["memory"] = {
            which: await unary_memory(channels[which], metadata, memory_calls) for which in SERVERS
        }
        results["bidi ping-pong"]["memory"] = {
            which: await bidi_memory(channels[which], metadata, memory_calls) for which in SERVERS
        }
        results["unary c=1"]["memory"]["wall_seconds"] = time.perf_counter() - phase
    finally:
        for channel in channels.values():
            channel.close()
        for server in (bare, ours):
            server.close()
            await server.wait_closed()
    return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results.items():
        bare, ours = entry["median"]["bare"], entry["median"]["daveloper"]
        spread = {which: (min(r["rate"] for r in entry[which]), max(r["rate"] for r in entry[which]))
                  for which in SERVERS}
        unit = "req/s" if name.startswith("unary") else "msg/s"
        row = [name,
               f"{bare['rate']:,.0f} ({spread['bare'][0]:,.0f}-{spread['bare'][1]:,.0f})",
               f"{ours['rate']:,.0f} ({spread['daveloper'][0]:,.0f}-{spread['daveloper'][1]:,.0f})",
               unit, f"{ours['rate'] / bare['rate']:.2f}"]
        if "p50" in bare:
            row += [" / ".join(f"{bare[p]:.0f}" for p in ("p50", "p90", "p99")),
                    " / ".join(f"{ours[p]:.0f}" for p in ("p50", "p90", "p99")),
                    " / ".join(f"{ours[p] / bare[p]:.2f}" for p in ("p50", "p90", "p99"))]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    lines = [table(["workload", "bare (min-max)", "daveloper (min-max)", "unit",
                    "throughput daveloper/bare", "bare p50 / p90 / p99 µs", "daveloper p50 / p90 / p99 µs",
                    "latency daveloper/bare p50 / p90 / p99"], rows)]
    gc_rows = []
    for name, entry in results.items():
        row = [name]
        totals = {}
        for which in SERVERS:
            calls = sum(r["n"] for r in entry[which])
            elapsed = sum(r["n"] / r["rate"] for r in entry[which])
            totals[which] = (calls, elapsed, [sum(r[f"gc{g}"] for r in entry[which]) for g in range(3)],
                             sum(r["gc_ms"] for r in entry[which]))
        row += [" / ".join(f"{count * 1000 / calls:.1f}" for count in runs) for calls, _, runs, _ in totals.values()]
        row += [f"{ms:.0f} ({ms / 10 / elapsed:.1f} %)" for _, elapsed, _, ms in totals.values()]
        gc_rows.append(row)
    lines += ["", table(["cyclic GC, all timed rounds", "bare per 1k calls or msgs, gen0 / gen1 / gen2",
                         "daveloper per 1k calls or msgs, gen0 / gen1 / gen2", "bare GC ms (share of time)",
                         "daveloper GC ms (share of time)"], gc_rows)]
    memory_rows = []
    for name in ("unary c=1", "bidi ping-pong"):
        memory = results[name].get("memory")
        if memory:
            memory_rows.append([name] + [f"{memory[which]['peak_bytes_per_call'] / 1024:.1f}" for which in SERVERS]
                               + [f"{memory[which]['retained_bytes_per_call']:.0f}" for which in SERVERS])
    if memory_rows:
        lines += ["", table(["tracemalloc (client + server)", "bare peak KiB/call", "daveloper peak KiB/call",
                             "bare retained B/call", "daveloper retained B/call"], memory_rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each timed run (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per server (default 5)")
    parser.add_argument("--memory-calls", type=int, default=300, help="calls per tracemalloc pass (default 300)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--profile", choices=SERVERS, help="only cProfile unary c=1 against one server")
    parser.add_argument("--client-request-id", action="store_true",
                        help="the client sends one constant x-request-id (so the runtime echoes it instead of "
                             "generating a fresh one per call; isolates the HPACK cost of a unique trailer)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.memory_calls = 0.2, 1, 30
    imported_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    started = time.perf_counter()
    request_id = "0123456789abcdef0123456789abcdef" if args.client_request_id else None
    results = uvloop.run(run(args.seconds, args.rounds, args.memory_calls, args.profile, request_id))
    wall = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if args.profile:
        print(results["profile"])
        return
    if args.json:
        print(json.dumps(results, indent=2))
        print(f"peak RSS {peak_rss:.0f} MiB ({imported_rss:.0f} after imports), wall {wall:.0f} s", file=sys.stderr)
        return
    print(f"python {platform.python_version()}, uvloop {uvloop.__version__}, one process and loop; "
          f"{args.rounds} alternating rounds of {args.seconds:g} s after a warm-up; medians over rounds"
          + ("; constant client x-request-id" if request_id else ""))
    print(report(results))
    print(f"\npeak RSS of the process (both servers and the client): {peak_rss:.0f} MiB, of which "
          f"{imported_rss:.0f} MiB was reached by the imports alone; wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
