"""What one ``SessionService/GetSession`` costs: Redis commands, round trips and CPU per call.

One process, one uvloop loop, loopback:

* **bare**: a grpclib ``Server`` with the generated ``VectorServiceBase`` answering
  ``ListCollections`` (no auth, no Redis): what any unary call costs;
* **GetSession**: the whole app (``open_app`` on the benchmark settings: rate limits on but
  too high to refuse, quotas on) on an embedded Valkey, called with a session token.

Each round makes N sequential calls to each, alternating which goes first, through grpclib
channels that send and receive raw bytes (no client-side encoding or decoding), so the client
costs both calls the same. CPU per call is ``time.process_time`` over the N calls (client and
server share the process: both figures include that client cost; the difference is the
server's extra work). Redis
figures come from the same runs: commands as Valkey counts them (``INFO commandstats``
deltas, which include the commands a script runs), and round trips as the app's client
sends them (a counting wrapper around ``redis.asyncio``'s connection). The app's own
background traffic (health checks, runtime options, leases) is measured over an idle
window first and subtracted.

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/session.py [--quick] [--calls N] [--rounds R] [--json]
    .venv/bin/python -m scripts.bench.session [same flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
import uvloop
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.server import Server
from redis.asyncio.connection import AbstractConnection

from daveloper.app import open_app
from daveloper.infra.valkey import EmbeddedValkey
from generated.daveloper.v1 import CreateSessionRequest, SessionServiceStub
from scripts.bench._app import bench_settings
from scripts.bench._stats import summary_us, table
from scripts.bench.rpc_overhead import UNARY, BareVectors
from scripts.bench.rpc_overhead import start as start_server

GET_SESSION = "/daveloper.v1.SessionService/GetSession"


class RawCodec(CodecBase):
    """The client sends and receives bytes as they are: both calls cost the client the same, whatever the messages."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


async def raw_unary(channel: Channel, path: str, metadata: dict[str, str]) -> None:
    async with channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes, timeout=5, metadata=metadata) as stream:
        await stream.send_message(b"", end=True)
        assert await stream.recv_message() is not None
        await stream.recv_trailing_metadata()

#: Commands the measurement itself sends on its own connection.
_OWN_COMMANDS = frozenset({"info"})


@contextmanager
def round_trips() -> Iterator[Counter[str]]:
    """Counts writes to Redis (``"round trips"``) and commands packed into them, by every client in the process."""
    counts: Counter[str] = Counter()
    send, pack = AbstractConnection.send_packed_command, AbstractConnection.pack_command

    async def counting_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counts["round trips"] += 1
        await send(self, command, check_health)

    def counting_pack(self: AbstractConnection, *args: Any) -> Any:
        counts["commands"] += 1
        return pack(self, *args)

    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
    AbstractConnection.pack_command = counting_pack  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        AbstractConnection.pack_command = pack  # type: ignore[method-assign]


async def commandstats(client: aioredis.Redis) -> Counter[str]:
    raw = await client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in raw.items()
                    if name.removeprefix("cmdstat_") not in _OWN_COMMANDS})


async def timed(call: Callable[[], Awaitable[None]], n: int, stats: aioredis.Redis,
                sent: Counter[str]) -> dict[str, Any]:
    """N sequential calls: CPU and latency per call, Redis commands executed and sent during them."""
    served_before, sent_before = await commandstats(stats), Counter(sent)
    latencies = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    served = await commandstats(stats) - served_before
    sent_now = Counter(sent)
    sent_now.subtract(sent_before)
    own = 2  # the two INFO calls of this function went through the counted client code too
    return {"n": n, "cpu_ms_per_call": cpu * 1e3 / n, "wall_s": wall, "served": dict(served),
            "round_trips": sent_now["round trips"] - own, "commands_sent": sent_now["commands"] - own,
            **summary_us(latencies)}


async def run(data_dir: Path, calls: int, rounds: int) -> dict[str, Any]:
    async with EmbeddedValkey(data_dir / "valkey") as valkey:
        stats = aioredis.Redis.from_url(valkey.url)
        settings = bench_settings(data_dir / "app", redis_url=valkey.url)
        bare = Server([BareVectors()])
        typed = await start_server(bare)
        typed.close()
        bare_channel = Channel("127.0.0.1", typed._port, codec=RawCodec())
        try:
            async with open_app(settings) as app:
                channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
                raw = Channel(app.grpc_addr.host, app.grpc_addr.port, codec=RawCodec())
                try:
                    return await measure(channel, raw, bare_channel, stats, calls, rounds)
                finally:
                    channel.close()
                    raw.close()
        finally:
            bare_channel.close()
            bare.close()
            await bare.wait_closed()
            await stats.aclose()


async def measure(channel: Channel, raw: Channel, bare_channel: Channel, stats: aioredis.Redis, calls: int,
                  rounds: int) -> dict[str, Any]:
    token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token
    metadata = {"authorization": f"Bearer {token}"}

    async def get_session() -> None:
        await raw_unary(raw, GET_SESSION, metadata)

    async def bare_unary() -> None:
        await raw_unary(bare_channel, UNARY, {})

    variants: dict[str, Callable[[], Awaitable[None]]] = {"bare grpclib unary": bare_unary,
                                                         "GetSession": get_session}
    with round_trips() as sent:
        for call in variants.values():  # warm-up: connections, scripts loaded, caches
            for _ in range(min(200, calls)):
                await call()
        idle_seconds = 1.0
        idle = await timed(lambda: asyncio.sleep(idle_seconds), 1, stats, sent)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(rounds):
            for name in names[round_ % 2:] + names[:round_ % 2]:
                runs[name].append(await timed(variants[name], calls, stats, sent))
    results: dict[str, Any] = {"idle": idle, "runs": runs}
    background_served = sum(idle["served"].values()) / idle["wall_s"]
    for name, entries in runs.items():
        total = sum(r["n"] for r in entries)
        wall = sum(r["wall_s"] for r in entries)
        served: Counter[str] = sum((Counter(r["served"]) for r in entries), Counter())
        results[name] = {
            "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in entries),
            "p50_us": statistics.median(r["p50"] for r in entries),
            "p99_us": statistics.median(r["p99"] for r in entries),
            "commands_per_call": max(0.0, (sum(served.values()) - background_served * wall) / total),
            "served_per_call": {c: n / total for c, n in served.most_common()},
            "round_trips_per_call": max(0.0, (sum(r["round_trips"] for r in entries)
                                              - idle["round_trips"] * wall / idle["wall_s"]) / total),
            "commands_sent_per_call": max(0.0, (sum(r["commands_sent"] for r in entries)
                                                - idle["commands_sent"] * wall / idle["wall_s"]) / total),
        }
    return results


def report(results: dict[str, Any]) -> str:
    bare = results["bare grpclib unary"]
    rows = []
    for name in ("bare grpclib unary", "GetSession"):
        entry = results[name]
        ratio = entry["cpu_ms_per_call"] / bare["cpu_ms_per_call"]
        rows.append([name, f"{entry['cpu_ms_per_call']:.3f}", f"{ratio:.2f}",
                     f"{entry['p50_us']:.0f} / {entry['p99_us']:.0f}",
                     f"{entry['commands_per_call']:.1f}", f"{entry['commands_sent_per_call']:.1f}",
                     f"{entry['round_trips_per_call']:.1f}"])
    served = results["GetSession"]["served_per_call"]
    return "\n".join([
        table(["call", "CPU ms per call (client + server)", "vs bare", "p50 / p99 µs",
               "Redis commands per call (Valkey, scripts' included)", "commands sent per call",
               "Redis round trips per call"], rows),
        "",
        "GetSession, Valkey commands per call (background included): "
        + ", ".join(f"{c} {n:.2f}" for c, n in served.items() if n >= 0.01),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 100, 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="daveloper-bench-session-") as data_dir:
        results = uvloop.run(run(Path(data_dir), args.calls, args.rounds))
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python {platform.python_version()}, uvloop {uvloop.__version__}, one process and loop, embedded Valkey; "
          f"{args.rounds} alternating rounds of {args.calls} sequential calls; medians over rounds")
    print(report(results))
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()
