"""What admission costs per call: session authentication and rate limiting against a real Redis.

Three grpclib servers in one process and one uvloop loop serve the same trivial unary RPC
(``VectorService/ListCollections`` answering an empty response) through the same
``daveloper.rpc.Servicer`` subclass and the same ``Interceptor``; they differ only in the
servicer's ``auth``:

* **none**: an authenticator that returns a fixed ``Principal`` without I/O (and is no gate);
* **auth**: the production ``SessionStore`` (bearer-token parse, HMAC-SHA256, expiry, then the
  session record in Redis);
* **auth + rate limit**: the production ``Guard`` (that ``SessionStore``, then one token from the
  session's and the client address's ``calls`` buckets via the ``RateLimiter`` Lua script), with
  limits so high (``1000000/s``) that nothing is refused.

Redis is a real Valkey (``EmbeddedValkey`` in a temporary directory, unix socket, the app's own
configuration) reached through the app's own client (``open_redis``). Every call carries a
session token from ``SessionStore.create`` and ``x-daveloper-client-address: 203.0.113.1``, which
the Interceptor trusts from loopback, so the Guard charges the per-address bucket as well as the
per-session one (a loopback address is exempt).

Workloads: unary calls sequentially (c=1) and from 8 concurrent tasks (c=8) on one channel per
server. Each gets a warm-up per server, then rounds in rotating order; figures are medians over
rounds. Redis round trips per call are counted on the client (every command the app's client
sends) and on the server (``INFO commandstats`` deltas, which include the commands a script runs),
with the Valkey process's CPU time from ``/proc``. ``--json`` keeps ``unary c=1``, ``unary c=8``
and ``redis`` as its top-level keys (``tests/test_bench.py`` relies on them).

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/guard.py [--quick] [--seconds S] [--rounds N] [--json]
    .venv/bin/python -m scripts.bench.guard [same flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
import uvloop
from grpclib.client import Channel
from grpclib.server import Server

from daveloper.audit import AuditLog
from daveloper.guard import Guard, RatePolicy
from daveloper.infra.redis import open_redis
from daveloper.infra.valkey import EmbeddedValkey
from daveloper.keys import DEFAULT_KEYS
from daveloper.ratelimit import RateLimiter
from daveloper.rpc import Call, Interceptor, Servicer
from daveloper.rpc.call import Principal
from daveloper.rpc.interceptor import CLIENT_ADDRESS_KEY
from daveloper.rpc.servicer import Authenticator
from daveloper.sessions import SessionStore, TokenSigner
from generated.daveloper.v1 import ListCollectionsRequest, ListCollectionsResponse, VectorServiceBase
from scripts.bench._app import bench_settings
from scripts.bench._stats import table
from scripts.bench.rpc_overhead import unary, unary_once

VARIANTS = ("none", "auth", "auth + rate limit")
#: A documentation address (RFC 5737): not loopback, so the Guard charges a per-address bucket too.
CLIENT_ADDRESS = "203.0.113.1"
EMPTY = ListCollectionsResponse()
#: What the measurement itself sends on its own connection during the timed runs.
_OWN_COMMANDS = frozenset({"info"})


class Vectors(Servicer):
    base = VectorServiceBase

    async def ListCollections(self, request: ListCollectionsRequest, call: Call[Any, Any]) -> ListCollectionsResponse:
        return EMPTY


class FixedPrincipal:
    """Authenticates every call as one session, without looking at anything."""

    def __init__(self, session_id: str) -> None:
        self._principal = Principal(session_id=session_id)

    async def authenticate(self, metadata: Any) -> Principal:
        return self._principal


class CommandCounter:
    """Counts the round trips a ``redis.asyncio.Redis`` instance makes, by command (a pipeline by what it carries)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.counts: Counter[str] = Counter()
        send, pipeline = client.execute_command, client.pipeline

        async def execute_command(*args: Any, **options: Any) -> Any:
            self.counts[str(args[0]).lower()] += 1
            return await send(*args, **options)

        def counting_pipeline(*args: Any, **options: Any) -> Any:
            pipe = pipeline(*args, **options)
            execute = pipe.execute

            async def counted_execute(*a: Any, **kw: Any) -> Any:
                carried = "+".join(str(command[0][0]).lower() for command in pipe.command_stack)
                self.counts[f"pipeline({carried})"] += 1
                return await execute(*a, **kw)

            pipe.execute = counted_execute  # type: ignore[method-assign]
            return pipe

        client.execute_command = execute_command  # type: ignore[method-assign]
        client.pipeline = counting_pipeline  # type: ignore[method-assign]

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)


class ValkeyStats:
    """Server-side figures from a separate connection: ``INFO commandstats`` calls and the process's CPU time."""

    def __init__(self, client: aioredis.Redis, pid: int | None) -> None:
        self._client = client
        self._pid = pid

    async def commands(self) -> tuple[Counter[str], Counter[str]]:
        """Calls and microseconds of execution by command, since the server started."""
        raw = await self._client.info("commandstats")
        stats = {name.removeprefix("cmdstat_"): value for name, value in raw.items()
                 if name.removeprefix("cmdstat_") not in _OWN_COMMANDS}
        return (Counter({name: int(value["calls"]) for name, value in stats.items()}),
                Counter({name: int(value["usec"]) for name, value in stats.items()}))

    def cpu_seconds(self) -> float:
        if self._pid is None:
            return 0.0
        fields = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# -- workload (client side) ------------------------------------------------------------------


# The unary workload (sequential or concurrent calls with latencies) is rpc_overhead's.


Workload = Callable[[Channel, dict[str, str], float], Awaitable[dict[str, float]]]

WORKLOADS: dict[str, Workload] = {
    "unary c=1": lambda ch, md, s: unary(ch, md, s, 1),
    "unary c=8": lambda ch, md, s: unary(ch, md, s, 8),
}


# -- driver ----------------------------------------------------------------------------------


async def start(server: Server) -> Channel:
    await server.start("127.0.0.1", 0)
    port = int(server._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return Channel("127.0.0.1", port)


async def measure(workload: Awaitable[dict[str, float]], counter: CommandCounter,
                  stats: ValkeyStats) -> dict[str, Any]:
    """One timed run, with the Redis commands it caused (client and server side) and Valkey's CPU time."""
    sent, (served, usec), cpu = counter.snapshot(), await stats.commands(), stats.cpu_seconds()
    result = await workload
    cpu = stats.cpu_seconds() - cpu
    served_after, usec_after = await stats.commands()
    served, usec = served_after - served, usec_after - usec
    sent = counter.snapshot() - sent
    calls = result["n"]
    return {**result,
            "round_trips_per_call": sum(sent.values()) / calls,
            "server_commands_per_call": sum(served.values()) / calls,
            "valkey_cpu_us_per_call": cpu * 1e6 / calls,
            "sent": dict(sent), "served": dict(served), "served_usec": dict(usec)}


async def run(data_dir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    settings = bench_settings(data_dir)  # rate limits 1000000/s, as every benchmark
    async with EmbeddedValkey(data_dir) as valkey, open_redis(replace(settings, redis_url=valkey.url)) as redis:
        stats_client = aioredis.Redis.from_url(valkey.url)
        try:
            return await run_with(redis, ValkeyStats(stats_client, valkey.pid), settings, seconds, rounds)
        finally:
            await stats_client.aclose()


async def run_with(redis: aioredis.Redis, stats: ValkeyStats, settings: Any, seconds: float,
                   rounds: int) -> dict[str, Any]:
    store = SessionStore(redis, TokenSigner(b"bench-signing-key"))
    record, token = await store.create(3600, {"bench": "guard"})
    audit = AuditLog(redis, retention_seconds=3600, instance="bench")
    guard = Guard(store, RateLimiter(redis), RatePolicy.from_settings(settings), audit)
    counter = CommandCounter(redis)  # installed after set-up: counts only what calls send
    auths: dict[str, Authenticator] = {"none": FixedPrincipal(record.id), "auth": store, "auth + rate limit": guard}
    servers = {}
    for variant in VARIANTS:
        servers[variant] = Server([Vectors(auth=auths[variant])])
        Interceptor(max_message_bytes=settings.max_message_bytes).install(servers[variant])
    channels = {variant: await start(server) for variant, server in servers.items()}
    metadata = {"authorization": f"Bearer {token}", CLIENT_ADDRESS_KEY: CLIENT_ADDRESS}  # the same for all
    results: dict[str, Any] = {}
    try:
        warm_up = min(0.5, seconds / 2)
        for name, workload in WORKLOADS.items():
            phase = time.perf_counter()
            for variant in VARIANTS:
                await workload(channels[variant], metadata, warm_up)
            per_variant: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
            for round_ in range(rounds):
                shift = round_ % len(VARIANTS)  # every variant runs first, second and last in turn
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    per_variant[variant].append(
                        await measure(workload(channels[variant], metadata, seconds), counter, stats))
            numeric = [key for key, value in per_variant[VARIANTS[0]][0].items() if isinstance(value, float | int)]
            results[name] = {
                **per_variant,
                "median": {variant: {key: statistics.median(r[key] for r in per_variant[variant]) for key in numeric}
                           for variant in VARIANTS},
                "wall_seconds": time.perf_counter() - phase,
            }
        # Buckets expire ~2 s after their last charge (burst/rate + 1 s): charge once more, then look.
        await unary_once(channels["auth + rate limit"], metadata)
        results["redis"] = await redis_summary(results, stats, record.id)
        results["redis"]["parts_us"] = await parts(redis, store, guard, token, record.id, 200 if seconds < 1 else 3000)
    finally:
        for channel in channels.values():
            channel.close()
        for server in servers.values():
            server.close()
            await server.wait_closed()
    return results


async def parts(redis: aioredis.Redis, store: SessionStore, guard: Guard, token: str, session_id: str,
                calls: int) -> dict[str, float]:
    """Median µs of the pieces on their own, sequentially in the same loop (after the timed runs, untimed there)."""
    buckets = guard._policy.buckets("calls", session_id, CLIENT_ADDRESS)
    limiter = guard._limiter
    key = store.record_key(session_id)
    signer = store._signer
    async def verify() -> str:
        return signer.verify(token)

    pieces: dict[str, Callable[[], Awaitable[Any]]] = {
        "token check (parse, HMAC, expiry), no I/O": verify,
        "one HMGET of the record": lambda: redis.hmget(key, ["last_active", "expires_at"]),
        "RateLimiter.take, 2 buckets (one EVALSHA)": lambda: limiter.take(buckets),
        "SessionStore.authenticate": lambda: store.authenticate({"authorization": f"Bearer {token}"}),
    }
    medians = {}
    for name, piece in pieces.items():
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await piece()
            samples.append(time.perf_counter() - started)
        medians[name] = statistics.median(samples) * 1e6
    return medians


async def redis_summary(results: dict[str, Any], stats: ValkeyStats, session_id: str) -> dict[str, Any]:
    """Commands per call by name over all timed rounds, and proof that both buckets were charged and none refused."""
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        runs = [run for name in WORKLOADS for run in results[name][variant]]
        calls = sum(run["n"] for run in runs)
        sent: Counter[str] = sum((Counter(run["sent"]) for run in runs), Counter())
        served: Counter[str] = sum((Counter(run["served"]) for run in runs), Counter())
        usec: Counter[str] = sum((Counter(run["served_usec"]) for run in runs), Counter())
        summary[variant] = {
            "calls": calls,
            "round_trips_per_call": sum(sent.values()) / calls,
            "sent_per_call": {command: count / calls for command, count in sent.most_common()},
            "served_per_call": {command: count / calls for command, count in served.most_common()},
            # A script's own time includes the commands it runs, which are also listed on their own.
            "served_us_per_call": {command: usec[command] / calls for command, _ in served.most_common()},
        }
    client = stats._client
    summary["buckets_present"] = {
        "session": bool(await client.hexists(DEFAULT_KEYS.session_rate(session_id), "calls:t")),
        "address": bool(await client.hexists(DEFAULT_KEYS.address_rate(CLIENT_ADDRESS), "calls:t")),
    }
    summary["audit_events"] = int(await client.xlen(DEFAULT_KEYS.audit))  # a refusal or auth failure would add one
    return summary


def report(results: dict[str, Any]) -> str:
    rows = []
    for name in WORKLOADS:
        entry = results[name]
        none = entry["median"]["none"]
        for variant in VARIANTS:
            median = entry["median"][variant]
            low, high = (f(r["rate"] for r in entry[variant]) for f in (min, max))
            rows.append([
                name, variant, f"{median['rate']:,.0f} ({low:,.0f}-{high:,.0f})",
                f"{median['rate'] / none['rate']:.2f}",
                f"{1e6 / median['rate'] - 1e6 / none['rate']:+.0f}",
                " / ".join(f"{median[p]:.0f}" for p in ("p50", "p90", "p99")),
                " / ".join(f"{median[p] / none[p]:.2f}" for p in ("p50", "p90", "p99")),
                f"{median['round_trips_per_call']:.2f}", f"{median['valkey_cpu_us_per_call']:.0f}",
            ])
    lines = [table(["workload", "auth", "calls/s (min-max)", "throughput vs none", "added µs per call (1/rate)",
                    "p50 / p90 / p99 µs", "latency vs none p50 / p90 / p99", "Redis round trips per call",
                    "Valkey CPU µs per call"], rows)]
    redis = results["redis"]
    rows = []
    for variant in VARIANTS:
        entry = redis[variant]
        rows.append([variant, f"{entry['calls']:,}", f"{entry['round_trips_per_call']:.3f}",
                     ", ".join(f"{c} {n:.3f}" for c, n in entry["sent_per_call"].items()) or "-",
                     ", ".join(f"{c} {n:.3f}" for c, n in entry["served_per_call"].items()) or "-",
                     ", ".join(f"{c} {n:.1f}" for c, n in entry["served_us_per_call"].items()) or "-"])
    lines += ["", table(["all timed rounds", "calls", "round trips per call", "client sent per call",
                         "Valkey executed per call (INFO commandstats, script commands included)",
                         "Valkey execution µs per call (a script's includes its commands')"], rows)]
    lines += ["", table(["piece, alone, sequential", "median µs"],
                        [[name, f"{us:.0f}"] for name, us in redis["parts_us"].items()])]
    lines += ["", f"buckets charged: session {redis['buckets_present']['session']}, "
                  f"address {redis['buckets_present']['address']}; audit events (refusals, auth failures): "
                  f"{redis['audit_events']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each timed run (default 1.5)")
    parser.add_argument("--rounds", type=int, default=6, help="rotating rounds per server (default 6)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.2, 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="daveloper-bench-guard-") as data_dir:
        results = uvloop.run(run(Path(data_dir), args.seconds, args.rounds))
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2))
        print(f"wall {wall:.0f} s", file=sys.stderr)
        return
    print(f"python {platform.python_version()}, uvloop {uvloop.__version__}, one process and loop, embedded Valkey "
          f"on a unix socket; {args.rounds} rotating rounds of {args.seconds:g} s after a warm-up; medians over rounds")
    print(report(results))
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()
