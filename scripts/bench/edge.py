"""The WebSocket edge vs a bare aiohttp WebSocket and vs native gRPC.

A **server process** runs the app on its embedded defaults (Valkey event log,
Qdrant local mode) with the edge, without rate limits or quotas (``_app.py``) and
with no cap on sockets per session (all clients share one session), plus, on one more port of the same process and
loop, a **bare aiohttp WebSocket echo** server (same heartbeat and frame limit as
the edge's sockets, no protocol on top) and a ``/stats`` route that reports the
process's RSS, CPU and tracemalloc figures. The chat provider is the local
``StampedModel`` below: tokens as fast as the loop allows,
each carrying its emit time. The **client process** (this one) drives three
workloads, on loopback:

* **(a) unary**, sequential round trips on one connection. *edge*: one socket
  (``daveloper.v1.json``, session token in ``hello``), ``open`` of
  ``SessionService/GetSession`` with its message and ``end``, read until its
  ``close``. *bare websocket*: a JSON frame of the same size as that ``open``,
  echoed back. *native gRPC*: the same ``GetSession`` on a grpclib ``Channel``.
  A warm-up each, then rounds in alternating order; medians over rounds.
* **(b) streaming**: C clients each run one ``AgentService/Chat`` turn of N tokens
  at once, as C WebSockets through the edge (one socket and one stream each,
  credit for everything) and as C native gRPC streams (over ``ceil(C/50)``
  grpclib channels, as one HTTP/2 connection takes about 100 streams). Tokens/s
  is token deltas received by all clients / wall time from the first ``open`` to
  the last ``close``. Per-token latency is emit → receipt (``perf_counter`` is
  ``CLOCK_MONOTONIC``, shared by both processes).
* **(c) idle sockets**: K bare WebSockets (upgraded, one echo exchanged), then K
  edge sockets (``hello``/``welcome`` done) held open. RSS of the server process
  per socket (a first pass, on a fresh heap, before (a) and (b)), then tracemalloc
  of the server process per socket (a second pass).

The WebSocket clients parse every frame with ``json.loads``; the gRPC clients
parse chat responses with protobuf (upb) classes, not betterproto2, so neither
client is the slow side. Server and client each have a process of their own
(the machine has 2 cores, shared with the embedded Valkey).

    .venv/bin/python -m scripts.bench.edge [--quick] [--clients 500] [--tokens 100] [--sockets 1000] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import re
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from google.protobuf import message_factory
from grpclib.client import Channel
from grpclib.const import Cardinality

from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolSpec
from daveloper.app import open_app
from daveloper.descriptors import load_descriptor_pool
from daveloper.edge.bridge import RawCodec
from generated.daveloper.v1 import ChatRequest, CreateSessionRequest, SendMessage, SessionServiceStub
from scripts.bench._app import bench_settings
from scripts.bench._stats import summary_us, table

ROOT = Path(__file__).resolve().parents[2]
SUBPROTOCOL = "daveloper.v1.json"
GET_SESSION = "/daveloper.v1.SessionService/GetSession"
CHAT = "/daveloper.v1.AgentService/Chat"
STAMP = re.compile(r"<(\d+)>")
TIMEOUT = 60.0
HEARTBEAT = 30.0  # what the edge uses with the default 120 s idle timeout
STREAMS_PER_CHANNEL = 50
CONNECT_CONCURRENCY = 50  # handshakes in flight while opening many sockets (listen backlog is 128)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KINDS = ("bare websocket", "edge", "native gRPC")


class StampedModel:
    """A local provider: ``tokens`` deltas, each ``<emit time in ns>``, as fast as the loop allows."""

    name = "stamped"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), model: str = "",
                     temperature: float | None = None, max_tokens: int = 0,
                     session_id: str = "") -> AsyncGenerator[ModelEvent, None]:
        for _ in range(self.tokens):
            yield TextDelta(f"<{time.perf_counter_ns()}>")
            await asyncio.sleep(0)
        yield ModelDone("stop", prompt_tokens=1, completion_tokens=self.tokens)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_of(pid: int | str) -> float:
    """User + system CPU seconds of a process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int | str) -> list[str]:
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += (task / "children").read_text().split()
    return found


# -- the server process -------------------------------------------------------------------------------


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return {"rss": values["VmRSS"], "peak_rss": values["VmHWM"]}


ECHO_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("echo_sockets", set)
EDGE_STATE: web.AppKey[Any] = web.AppKey("edge_state", object)


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT, max_msg_size=8 * 1024 * 1024)
    await ws.prepare(request)
    sockets = request.app[ECHO_SOCKETS]
    sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        sockets.discard(ws)
    return ws


async def stats(request: web.Request) -> web.Response:
    """This process's figures. ``?trace=start|stop`` toggles tracemalloc, ``?gc=1`` collects first,
    ``?reset_peak=1`` resets the peak RSS (``/proc/self/clear_refs``)."""
    query = request.query
    if query.get("trace") == "start":
        tracemalloc.start()
    elif query.get("trace") == "stop":
        tracemalloc.stop()
    if query.get("reset_peak"):
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:  # noqa: ASYNC230
            refs.write("5")  # otherwise the peak stays the process's lifetime peak
    if query.get("gc"):
        gc.collect()
    children = children_of("self")
    return web.json_response({
        **memory_status(),
        "cpu": time.process_time(),
        "children_cpu": sum(cpu_of(pid) for pid in children),
        "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        "edge_sockets": len(request.app[EDGE_STATE].sockets),
        "echo_sockets": len(request.app[ECHO_SOCKETS]),
    })


async def serve(tokens: int) -> None:
    """Run the app and the echo server until stdin closes; the first stdout line gives their addresses."""
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        # No rate limits or quotas (scripts/bench/_app.py), and every client shares one session.
        # Every turn admitted (no max_running_turns / max_starting_turns): edge and native see the same 500 turns.
        settings = bench_settings(Path(tmp), ws_max_sockets_per_session=1_000_000, max_running_turns=10**6,
                                  max_starting_turns=10**6)
        async with open_app(settings, chat_model=StampedModel(tokens)) as app:
            bare = web.Application()
            bare[ECHO_SOCKETS] = set()
            bare[EDGE_STATE] = app.edge.state
            bare.router.add_get("/ws", echo)
            bare.router.add_get("/stats", stats)
            runner = web.AppRunner(bare, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            print(json.dumps({"grpc": [app.grpc_addr.host, app.grpc_addr.port], "edge": app.edge.url,
                              "bare": f"http://127.0.0.1:{port}"}), flush=True)
            try:
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent goes
            finally:
                for ws in list(bare[ECHO_SOCKETS]):
                    await ws.close()
                await runner.cleanup()


# -- the client side ----------------------------------------------------------------------------------


class Server:
    """The server process, seen from the client process."""

    def __init__(self, process: asyncio.subprocess.Process, addresses: dict[str, Any],
                 http: aiohttp.ClientSession) -> None:
        self.process = process
        self.grpc = (str(addresses["grpc"][0]), int(addresses["grpc"][1]))
        self.edge = str(addresses["edge"])
        self.bare = str(addresses["bare"])
        self.http = http

    async def stats(self, **query: str) -> dict[str, Any]:
        async with self.http.get(f"{self.bare}/stats", params=query) as response:
            figures: dict[str, Any] = await response.json()
            return figures

    def channel(self) -> Channel:
        return Channel(*self.grpc, codec=RawCodec())


async def start_server(tokens: int, http: aiohttp.ClientSession) -> Server:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.bench.edge", "--serve", "--tokens", str(tokens), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        raise RuntimeError(f"the server process exited with {await process.wait()}")
    return Server(process, json.loads(line), http)


async def stop_server(server: Server) -> None:
    assert server.process.stdin is not None
    server.process.stdin.close()
    try:
        await asyncio.wait_for(server.process.wait(), 30)
    except TimeoutError:
        server.process.kill()
        await server.process.wait()


async def create_session(server: Server) -> str:
    channel = Channel(*server.grpc)
    try:
        return (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=TIMEOUT)).token
    finally:
        channel.close()


async def ws_connect(http: aiohttp.ClientSession, url: str, hello: str | None) -> aiohttp.ClientWebSocketResponse:
    """A socket to ``/ws``; with ``hello`` (a token) the edge handshake, else one echo exchange."""
    ws = await http.ws_connect(f"{url}/ws", protocols=(SUBPROTOCOL,), max_msg_size=8 * 1024 * 1024)
    if hello is not None:
        await ws.send_str(json.dumps({"type": "hello", "token": hello}))
        frame = json.loads(await ws.receive_str(timeout=TIMEOUT))
        assert frame["type"] == "welcome", frame
    else:
        await ws.send_str('{"type": "ping"}')
        assert json.loads(await ws.receive_str(timeout=TIMEOUT)) == {"type": "ping"}
    return ws


async def connect_many(http: aiohttp.ClientSession, url: str, hello: str | None,
                       count: int) -> list[aiohttp.ClientWebSocketResponse]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> aiohttp.ClientWebSocketResponse:
        async with gate:
            return await ws_connect(http, url, hello)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(server: Server, sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))
    for _ in range(200):  # until the server has let them go
        figures = await server.stats()
        if figures["edge_sockets"] == figures["echo_sockets"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"server still holds sockets: {figures}")


# -- (a) unary -----------------------------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[None]], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    while (sent := time.perf_counter()) < deadline:
        await call()
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    return {"rate": len(latencies) / elapsed, "n": len(latencies), **summary_us(latencies)}


async def unary(server: Server, token: str, seconds: float, rounds: int) -> dict[str, Any]:
    http = server.http
    edge = await ws_connect(http, server.edge, token)
    bare = await ws_connect(http, server.bare, None)
    channel = server.channel()
    ids = itertools.count(1)
    metadata = {"authorization": f"Bearer {token}"}
    echo_frame = json.dumps({"type": "open", "id": 2**31 - 1, "method": GET_SESSION, "message": {}, "end": True})

    async def over_edge() -> None:
        stream_id = next(ids)
        await edge.send_str(json.dumps({"type": "open", "id": stream_id, "method": GET_SESSION, "message": {},
                                        "end": True}))
        while True:
            frame = json.loads(await edge.receive_str(timeout=TIMEOUT))
            if frame["type"] == "msg":
                assert frame["message"]["session"]["id"]
            elif frame["type"] == "close":
                assert frame["status"]["code"] == "ok", frame
                return

    async def over_bare() -> None:
        await bare.send_str(echo_frame)
        assert json.loads(await bare.receive_str(timeout=TIMEOUT))["type"] == "open"

    async def over_grpc() -> None:
        async with channel.request(GET_SESSION, Cardinality.UNARY_UNARY, bytes, bytes, timeout=TIMEOUT,
                                   metadata=metadata) as stream:
            await stream.send_message(b"", end=True)
            assert await stream.recv_message()
            await stream.recv_trailing_metadata()

    calls = dict(zip(KINDS, (over_bare, over_edge, over_grpc), strict=True))
    per_kind: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    try:
        for call in calls.values():
            await timed(call, min(0.5, seconds / 2))
        for round_ in range(rounds):
            for kind in KINDS if round_ % 2 == 0 else reversed(KINDS):
                per_kind[kind].append(await timed(calls[kind], seconds))
    finally:
        await edge.close()
        await bare.close()
        channel.close()
    result: dict[str, Any] = {
        kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for kind, runs in per_kind.items()
    }
    for kind, runs in per_kind.items():
        result[kind]["rate_min"] = min(r["rate"] for r in runs)
        result[kind]["rate_max"] = max(r["rate"] for r in runs)
    result["request frame bytes"] = len(echo_frame)
    return result


# -- (b) streaming -------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.tokens = 0
        self.events = 0
        self.latencies: list[float] = []

    def add(self, text: str) -> None:
        now = time.perf_counter_ns()
        stamps = STAMP.findall(text)
        self.latencies.extend((now - int(s)) / 1e9 for s in stamps)
        self.tokens += len(stamps)


async def measured(server: Server, tally: Tally, run: Awaitable[None]) -> dict[str, Any]:
    """Wall time, CPU of both processes (and Valkey), and the server's peak RSS while ``run`` runs."""
    before = await server.stats(gc="1", reset_peak="1")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    await run
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = usage.ru_utime + usage.ru_stime - client_cpu
    after = await server.stats()
    server_cpu = after["cpu"] - before["cpu"]
    return {
        "tokens": tally.tokens, "events": tally.events, "seconds": elapsed, "tokens_per_s": tally.tokens / elapsed,
        "server_cpu_s": server_cpu, "valkey_cpu_s": after["children_cpu"] - before["children_cpu"],
        "client_cpu_s": client_cpu, "server_cpu_ms_per_1k_tokens": server_cpu / tally.tokens * 1e6,
        "server_busy": server_cpu / elapsed, "server_peak_rss": after["peak_rss"], "server_rss_before": before["rss"],
        **summary_us(tally.latencies),
    }


async def stream_edge(server: Server, token: str, clients: int) -> dict[str, Any]:
    sockets = await connect_many(server.http, server.edge, token, clients)
    tally = Tally()

    async def turn(ws: aiohttp.ClientWebSocketResponse, i: int) -> None:
        await ws.send_str(json.dumps({"type": "open", "id": 1, "method": CHAT, "credit": 2**31 - 1,
                                      "message": {"send": {"text": f"turn {i}"}}, "end": True}))
        while True:
            frame = json.loads(await ws.receive_str(timeout=TIMEOUT * 5))
            if frame["type"] == "msg":
                tally.events += 1
                delta = frame["message"]["event"].get("tokenDelta")
                if delta is not None:
                    tally.add(delta["text"])
            elif frame["type"] == "close":
                assert frame["status"]["code"] == "ok", frame
                return

    try:
        return await measured(server, tally, asyncio.gather(*(turn(ws, i) for i, ws in enumerate(sockets))))
    finally:
        await close_all(server, sockets)


async def stream_grpc(server: Server, token: str, clients: int) -> dict[str, Any]:
    pool = load_descriptor_pool()
    response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("daveloper.v1.ChatResponse"))
    channels = [server.channel() for _ in range(math.ceil(clients / STREAMS_PER_CHANNEL))]
    metadata = {"authorization": f"Bearer {token}"}
    tally = Tally()

    async def warm(channel: Channel) -> None:  # connect every channel before the clock starts
        async with channel.request(GET_SESSION, Cardinality.UNARY_UNARY, bytes, bytes, timeout=TIMEOUT,
                                   metadata=metadata) as stream:
            await stream.send_message(b"", end=True)
            await stream.recv_message()
            await stream.recv_trailing_metadata()

    async def turn(i: int) -> None:
        request = bytes(ChatRequest(send=SendMessage(text=f"turn {i}")))
        async with channels[i % len(channels)].request(CHAT, Cardinality.STREAM_STREAM, bytes, bytes,
                                                       timeout=TIMEOUT * 5, metadata=metadata) as stream:
            await stream.send_message(request, end=True)
            while (data := await stream.recv_message()) is not None:
                tally.events += 1
                event = response_class.FromString(data).event
                if event.HasField("token_delta"):
                    tally.add(event.token_delta.text)
            await stream.recv_trailing_metadata()

    try:
        await asyncio.gather(*(warm(channel) for channel in channels))
        result = await measured(server, tally, asyncio.gather(*(turn(i) for i in range(clients))))
    finally:
        for channel in channels:
            channel.close()
    result["channels"] = len(channels)
    return result


async def streaming(http: aiohttp.ClientSession, clients: int, tokens: int, rounds: int) -> dict[str, Any]:
    """Each run on a fresh server process, so that peak RSS and heap growth are comparable."""
    runs: dict[str, list[dict[str, Any]]] = {"edge": [], "native gRPC": []}
    run = {"edge": stream_edge, "native gRPC": stream_grpc}
    for round_ in range(rounds):
        for kind in runs if round_ % 2 == 0 else reversed(runs):
            server = await start_server(tokens, http)
            try:
                result = await run[kind](server, await create_session(server), clients)
            finally:
                await stop_server(server)
            assert result["tokens"] == clients * tokens, (kind, result["tokens"], clients * tokens)
            runs[kind].append(result)
    return {kind: {**{key: statistics.median(r[key] for r in results) for key in results[0]},
                   "tokens_per_s_all": [r["tokens_per_s"] for r in results]}
            for kind, results in runs.items()}


# -- (c) idle sockets ----------------------------------------------------------------------------------


async def idle_pass(server: Server, token: str, count: int, key: str) -> dict[str, float]:
    """Open ``count`` bare sockets, then ``count`` edge sockets, all held open; growth of ``key`` per socket."""
    await asyncio.sleep(0.2)
    start = (await server.stats(gc="1"))[key]
    bare = await connect_many(server.http, server.bare, None, count)
    await asyncio.sleep(0.5)
    middle = (await server.stats(gc="1"))[key]
    edge = await connect_many(server.http, server.edge, token, count)
    await asyncio.sleep(0.5)
    figures = await server.stats(gc="1")
    assert figures["edge_sockets"] == figures["echo_sockets"] == count, figures
    await close_all(server, bare + edge)
    return {"bare websocket": (middle - start) / count, "edge": (figures[key] - middle) / count}


async def idle_sockets(server: Server, token: str, count: int) -> dict[str, Any]:
    await close_all(server, [*await connect_many(server.http, server.bare, None, 10),
                             *await connect_many(server.http, server.edge, token, 10)])  # warm-up
    rss = await idle_pass(server, token, count, "rss")
    await server.stats(trace="start")
    try:
        traced = await idle_pass(server, token, count, "traced")
    finally:
        await server.stats(trace="stop")
    return {kind: {"rss_per_socket": rss[kind], "traced_per_socket": traced[kind]} for kind in rss}


# -- driver --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"config": {"clients": args.clients, "tokens": args.tokens, "sockets": args.sockets,
                                          "seconds": args.seconds, "rounds": args.rounds,
                                          "fd_limit": raise_fd_limit()}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        server = await start_server(args.tokens, http)
        try:
            token = await create_session(server)
            phase = time.perf_counter()
            results["idle"] = await idle_sockets(server, token, args.sockets)
            results["idle"]["wall_seconds"] = time.perf_counter() - phase
            phase = time.perf_counter()
            results["unary"] = await unary(server, token, args.seconds, args.rounds)
            results["unary"]["wall_seconds"] = time.perf_counter() - phase
        finally:
            await stop_server(server)
        phase = time.perf_counter()
        results["streaming"] = await streaming(http, args.clients, args.tokens, args.stream_rounds)
        results["streaming"]["wall_seconds"] = time.perf_counter() - phase
    return results


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    unary_results = results["unary"]
    bare, edge, grpc = (unary_results[kind] for kind in KINDS)
    lines = [f"(a) unary, sequential on one connection ({config['rounds']} rounds of {config['seconds']:g} s, "
             f"medians; bare frame {unary_results['request frame bytes']} B)", table(
                 ["path", "req/s (min-max)", "p50 / p90 / p99 µs", "throughput edge/this",
                  "p50 latency edge/this"],
                 [[kind, f"{r['rate']:,.0f} ({r['rate_min']:,.0f}-{r['rate_max']:,.0f})",
                   " / ".join(f"{r[p]:.0f}" for p in ("p50", "p90", "p99")),
                   f"{edge['rate'] / r['rate']:.2f}", f"{edge['p50'] / r['p50']:.2f}"]
                  for kind, r in zip(KINDS, (bare, edge, grpc), strict=True)])]
    stream = results["streaming"]
    lines += ["", f"(b) {config['clients']} concurrent Chat turns x {config['tokens']} tokens", table(
        ["clients on", "tokens/s (each run)", "events", "per-token p50 / p99 ms", "server CPU s (ms per 1k tokens)",
         "server busy", "Valkey CPU s", "client CPU s", "server RSS at start → peak MiB"],
        [[kind, f"{r['tokens_per_s']:,.0f} ({', '.join(f'{x:,.0f}' for x in r['tokens_per_s_all'])})",
          f"{r['events']:,.0f}", f"{r['p50'] / 1000:.0f} / {r['p99'] / 1000:.0f}",
          f"{r['server_cpu_s']:.1f} ({r['server_cpu_ms_per_1k_tokens']:.0f})", f"{r['server_busy']:.0%}",
          f"{r['valkey_cpu_s']:.1f}", f"{r['client_cpu_s']:.1f}",
          f"{r['server_rss_before'] / 2**20:.0f} → {r['server_peak_rss'] / 2**20:.0f}"]
         for kind, r in stream.items() if kind != "wall_seconds"])]
    e, g = stream["edge"], stream["native gRPC"]
    lines.append(f"ratio edge/native: tokens/s {e['tokens_per_s'] / g['tokens_per_s']:.2f}, server CPU per token "
                 f"{e['server_cpu_ms_per_1k_tokens'] / g['server_cpu_ms_per_1k_tokens']:.2f}")
    idle = results["idle"]
    lines += ["", f"(c) {config['sockets']} idle sockets held open, server process", table(
        ["socket", "RSS per socket KiB", "tracemalloc per socket KiB"],
        [[kind, f"{idle[kind]['rss_per_socket'] / 1024:.1f}", f"{idle[kind]['traced_per_socket'] / 1024:.1f}"]
         for kind in ("bare websocket", "edge")])]
    lines.append(f"ratio edge/bare: RSS {idle['edge']['rss_per_socket'] / idle['bare websocket']['rss_per_socket']:.2f}"
                 f", tracemalloc "
                 f"{idle['edge']['traced_per_socket'] / idle['bare websocket']['traced_per_socket']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500, help="concurrent chat clients in (b) (default 500)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per chat turn in (b) (default 100)")
    parser.add_argument("--sockets", type=int, default=1000, help="idle sockets of each kind in (c) (default 1000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each timed unary run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating unary rounds (default 3)")
    parser.add_argument("--stream-rounds", type=int, default=2, help="alternating streaming rounds (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (under 40 s)")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.tokens))
        return
    if args.quick:
        args.clients, args.tokens, args.sockets, args.seconds, args.rounds, args.stream_rounds = 50, 20, 100, 0.3, 1, 1
    started = time.perf_counter()
    results = uvloop.run(run(args))
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2))
        print(f"wall {wall:.0f} s", file=sys.stderr)
        return
    print(f"python {platform.python_version()}, uvloop {uvloop.__version__}, aiohttp {aiohttp.__version__}; "
          f"server and client in two processes on {os.cpu_count()} cores (plus the embedded Valkey); "
          f"open-files limit {results['config']['fd_limit']}")
    print(report(results))
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()
