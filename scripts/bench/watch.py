"""``AgentService/Watch``: replay throughput and the cost of idle streams, vs a bare grpclib server.

Two servers, one at a time, each in this process on one uvloop loop:

* **daveloper**: the whole app on its embedded defaults (``open_app``: embedded Valkey, the
  production interceptor, auth and event log). One chat turn (offline provider) creates each
  conversation; then ``--events`` token-delta ``ChatEvent`` s are appended to the first
  conversation's event log, the way a turn appends them (serialized once).
* **bare**: a plain grpclib ``Server`` whose ``Watch`` handler sends the same serialized
  ``WatchResponse`` bytes from memory (no Redis, no auth, no interceptor): the transport alone.

The client runs in a child process (this script with ``--client``) and never decodes: it counts
raw messages, so the server is what is measured. Workloads:

* **replay**: ``--watchers`` concurrent Watch streams, each from ``after_seq = 0``, reading
  ``--events`` messages; msgs/s over all streams, and server CPU per message (this process's CPU
  time, plus the Valkey process's for daveloper).
* **idle**: ``--idle`` Watch streams spread over ``--conversations`` conversations, each
  resumed at the conversation's last seq so nothing is due; once every stream is in its handler,
  ``--seconds`` of measurement: server CPU (% of one core), Valkey CPU, Redis commands/s
  (``INFO stats`` deltas minus our own INFO calls).

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/watch.py [--quick] [--events N] [--watchers W] [--idle K] [--json]
    .venv/bin/python -m scripts.bench.watch [same flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import uvloop
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from daveloper.agent.turns import conversation_scope
from daveloper.app import open_app
from daveloper.edge.bridge import RawCodec
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    CreateSessionRequest,
    SendMessage,
    SessionServiceStub,
    TokenDelta,
    WatchRequest,
    WatchResponse,
)
from scripts.bench._app import bench_settings
from scripts.bench._stats import table

WATCH = "/daveloper.v1.AgentService/Watch"
TEXT = "tok "  # a typical coalesced token delta is a few characters


# -- the client (child process) --------------------------------------------------------


async def client_main(args: argparse.Namespace) -> None:
    """Open the streams the parent asks for; report counts and wall time as one JSON line."""
    host, port = args.client[0], int(args.client[1])
    targets = json.loads(args.targets)  # [[conversation_id, after_seq], ...]
    # grpclib servers allow 100 concurrent streams per connection: one channel per 100 streams
    channels = [Channel(host, port, codec=RawCodec()) for _ in range(max(1, -(-len(targets) // 100)))]
    metadata = {"authorization": f"Bearer {args.token}"} if args.token else {}

    async def watch(n: int, conversation_id: str, after_seq: int, expect: int) -> int:
        count = 0
        async with channels[n // 100].request(WATCH, Cardinality.UNARY_STREAM, WatchRequest, WatchResponse,
                                   timeout=600, metadata=metadata) as stream:
            await stream.send_message(bytes(WatchRequest(conversation_id=conversation_id, after_seq=after_seq)),
                                      end=True)
            async for _ in stream:
                count += 1
                if count == expect:
                    break
            await stream.cancel()  # the log goes on: stop tailing it
        return count

    try:
        started = time.perf_counter()
        if args.expect:  # replay
            counts = await asyncio.gather(*(watch(n, c, a, args.expect) for n, (c, a) in enumerate(targets)))
            print(json.dumps({"msgs": sum(counts), "seconds": time.perf_counter() - started}), flush=True)
        else:  # idle: hold the streams open until told to stop
            tasks = [asyncio.create_task(watch(n, c, a, 0)) for n, (c, a) in enumerate(targets)]
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for channel in channels:
            channel.close()


async def spawn_client(port: int, token: str, targets: list[tuple[str, int]],
                       expect: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", "127.0.0.1", str(port), "--token", token,
        "--targets", json.dumps(targets), "--expect", str(expect),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )


# -- servers ---------------------------------------------------------------------------


class Cpu:
    """CPU seconds of this process and, if given, of another one (from /proc)."""

    def __init__(self, pid: int | None = None) -> None:
        self._pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> tuple[float, float]:
        other = 0.0
        if self._pid is not None:
            fields = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()
            other = (int(fields[11]) + int(fields[12])) / self._tick
        return time.process_time(), other


class Target:
    """A server under test: its port, a token, conversations, and how to count what it does."""

    def __init__(self, name: str, port: int, token: str, conversations: list[str], last_seq: list[int],
                 cpu: Cpu, inflight: Callable[[], int], redis: aioredis.Redis | None) -> None:
        self.name, self.port, self.token = name, port, token
        self.conversations, self.last_seq = conversations, last_seq
        self.cpu, self.inflight, self.redis = cpu, inflight, redis

    async def commands(self) -> int:
        if self.redis is None:
            return 0
        return int((await self.redis.info("stats"))["total_commands_processed"])


@asynccontextmanager
async def daveloper_server(data_dir: Path, conversations: int, events: int) -> AsyncIterator[Target]:
    async with open_app(bench_settings(data_dir, event_retention=events + 1_000)) as app:
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)
            token, session_id = created.token, created.session.id
            auth = {"authorization": f"Bearer {token}"}
            ids = [f"conv_bench{i:04d}" for i in range(conversations)]
            for conversation_id in ids:  # one short offline turn creates each conversation
                requests = [ChatRequest(send=SendMessage(conversation_id=conversation_id, text="hello"))]
                async for _ in AgentServiceStub(channel).chat(requests, timeout=60, metadata=auth):
                    pass
        finally:
            channel.close()
        scope = conversation_scope(session_id, ids[0])
        payload = bytes(ChatEvent(conversation_id=ids[0], turn_id="turn_bench", token_delta=TokenDelta(text=TEXT)))
        for start in range(0, events, 500):
            await asyncio.gather(*(app.events.append(scope, payload) for _ in range(min(500, events - start))))
        last = [await app.events.last_seq(conversation_scope(session_id, c)) for c in ids]
        pid = int((await app.redis.info("server"))["process_id"])
        yield Target("daveloper", app.grpc_addr.port, token, ids, last, Cpu(pid), lambda: app.interceptor.inflight,
                     app.redis)


class BareWatch:
    """``AgentService/Watch`` in plain grpclib: the stored events' bytes, from memory."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages
        self.inflight = 0

    def __mapping__(self) -> dict[str, Handler]:
        return {WATCH: Handler(self.watch, Cardinality.UNARY_STREAM, bytes, bytes)}

    async def watch(self, stream: Stream[bytes, bytes]) -> None:
        self.inflight += 1
        try:
            request = WatchRequest.parse(await stream.recv_message() or b"")
            for message in self.messages[request.after_seq:]:
                await stream.send_message(message)
            await asyncio.Event().wait()  # then tail a log that never grows
        finally:
            self.inflight -= 1


@asynccontextmanager
async def bare_server(conversations: int, events: int) -> AsyncIterator[Target]:
    messages = [bytes(WatchResponse(event=ChatEvent(seq=seq, conversation_id="conv_bench0000", turn_id="turn_bench",
                                                    token_delta=TokenDelta(text=TEXT))))
                for seq in range(1, events + 1)]
    service = BareWatch(messages)
    server = Server([service], codec=RawCodec())
    await server.start("127.0.0.1", 0)
    try:
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ids = [f"conv_bench{i:04d}" for i in range(conversations)]
        yield Target("bare grpclib", port, "", ids, [events] * conversations, Cpu(), lambda: service.inflight, None)
    finally:
        server.close()
        await server.wait_closed()


# -- workloads -------------------------------------------------------------------------


async def replay(target: Target, watchers: int, events: int) -> dict[str, float]:
    before = target.cpu()
    child = await spawn_client(target.port, target.token, [(target.conversations[0], 0)] * watchers, events)
    out, _ = await child.communicate()
    after = target.cpu()
    result = json.loads(out.decode().strip().splitlines()[-1])
    msgs, seconds = result["msgs"], result["seconds"]
    assert msgs == watchers * events, result
    return {"msgs_per_s": msgs / seconds, "server_us_per_msg": (after[0] - before[0]) / msgs * 1e6,
            "valkey_us_per_msg": (after[1] - before[1]) / msgs * 1e6}


async def idle(target: Target, streams: int, seconds: float) -> dict[str, float]:
    targets = [(target.conversations[i % len(target.conversations)], target.last_seq[i % len(target.conversations)])
               for i in range(streams)]
    child = await spawn_client(target.port, target.token, targets, 0)
    try:
        for _ in range(6000):
            if target.inflight() >= streams:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError(f"only {target.inflight()} of {streams} streams opened")
        await asyncio.sleep(1.0)  # settle: every stream has replayed nothing and waits
        commands, cpu, wall = await target.commands(), target.cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        commands_after, cpu_after, elapsed = await target.commands(), target.cpu(), time.perf_counter() - wall
    finally:
        assert child.stdin is not None
        child.stdin.write(b"stop\n")
        await child.communicate()
    own_info = 1 if target.redis is not None else 0
    return {"server_cpu_pct": (cpu_after[0] - cpu[0]) / elapsed * 100,
            "valkey_cpu_pct": (cpu_after[1] - cpu[1]) / elapsed * 100,
            "redis_commands_per_s": (commands_after - commands - own_info) / elapsed}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dv-bench-watch-") as tmp:
        for name in ("bare grpclib", "daveloper"):
            server = (bare_server(args.conversations, args.events) if name == "bare grpclib"
                      else daveloper_server(Path(tmp), args.conversations, args.events))
            async with server as target:
                runs = [await replay(target, args.watchers, args.events) for _ in range(args.rounds)]
                best = max(runs, key=lambda r: r["msgs_per_s"])
                results[name] = {"replay": best, "no streams": await idle(target, 0, args.seconds),
                                 "idle": await idle(target, args.idle, args.seconds)}
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    bare, ours = results["bare grpclib"], results["daveloper"]
    rows = [
        ["replay msgs/s", f"{bare['replay']['msgs_per_s']:,.0f}", f"{ours['replay']['msgs_per_s']:,.0f}",
         f"{ours['replay']['msgs_per_s'] / bare['replay']['msgs_per_s']:.2f}"],
        ["replay server CPU µs/msg", f"{bare['replay']['server_us_per_msg']:.1f}",
         f"{ours['replay']['server_us_per_msg']:.1f}",
         f"{ours['replay']['server_us_per_msg'] / bare['replay']['server_us_per_msg']:.2f}"],
        ["replay Valkey CPU µs/msg", "n/a", f"{ours['replay']['valkey_us_per_msg']:.1f}", ""],
        [f"{args.idle} idle streams: server CPU % of a core", f"{bare['idle']['server_cpu_pct']:.2f}",
         f"{ours['idle']['server_cpu_pct']:.2f}", ""],
        [f"{args.idle} idle streams: Valkey CPU % of a core", "n/a", f"{ours['idle']['valkey_cpu_pct']:.2f}", ""],
        [f"{args.idle} idle streams: Redis commands/s", "0", f"{ours['idle']['redis_commands_per_s']:.1f}", ""],
        ["no streams (background): server CPU %", f"{bare['no streams']['server_cpu_pct']:.2f}",
         f"{ours['no streams']['server_cpu_pct']:.2f}", ""],
        ["no streams (background): Redis commands/s", "0", f"{ours['no streams']['redis_commands_per_s']:.1f}", ""],
    ]
    head = (f"Watch: {args.watchers} concurrent replays of {args.events:,} events (best of {args.rounds}); "
            f"{args.idle} idle streams over {args.conversations} conversations for {args.seconds:.0f} s; "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    return head + "\n\n" + table(["", "bare grpclib", "daveloper", "ratio"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1_000)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--targets", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        uvloop.run(client_main(args))
        return
    if args.quick:
        args.events, args.rounds, args.idle, args.conversations, args.seconds = 1_000, 1, 100, 5, 0.5
    results = uvloop.run(bench(args))
    print(json.dumps(results, indent=2) if args.json else report(results, args))


if __name__ == "__main__":
    main()
