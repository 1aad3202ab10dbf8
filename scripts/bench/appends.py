"""Event-log appends made together, as when many turns stream at once: CPU per append in this process.

Against a Valkey started for the run, side by side in one process:

* **redis-py, one call each** (the baseline): ``--appends`` concurrent calls of the append script
  through redis-py's ``Script``, as the event log made them before it batched;
* **redis-py, one pipeline**: the same calls in one hand-built pipeline, the floor for batching;
* **EventLog.append_many**: the same appends through the event log, which batches calls made
  together (:mod:`daveloper.infra.batching`);
* **one at a time**: calls awaited one after another (nothing to batch with), through redis-py's
  ``Script`` and through the event log.

Each is the median of ``--rounds`` rounds; CPU is this process's (``time.process_time``).

    .venv/bin/python -m scripts.bench.appends [--quick] [--appends 1000] [--rounds 5] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from daveloper.eventlog import EventLog
from daveloper.eventlog._append import APPEND
from daveloper.infra.redis import connect_redis
from daveloper.infra.valkey import EmbeddedValkey
from scripts.bench._stats import median, table

PAYLOAD = b"\x0a\x04c123\x12\x0eturn_0123456789\x32\x06token " * 2  # about a token event's size


async def _timed(run: Callable[[], Awaitable[object]], appends: int, rounds: int) -> dict[str, float]:
    cpu, wall = [], []
    for _ in range(rounds):
        started_cpu, started = time.process_time(), time.perf_counter()
        await run()
        cpu.append((time.process_time() - started_cpu) / appends * 1e6)
        wall.append((time.perf_counter() - started) * 1e3)
    return {"cpu_us_per_append": median(cpu), "wall_ms": median(wall)}


async def measure(appends: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data:
        valkey = EmbeddedValkey(Path(data))
        await valkey.start()
        redis = connect_redis(valkey.url)
        try:
            log = EventLog(redis, retention=1000, ttl_seconds=3600)
            script = redis.register_script(APPEND)
            batch = itertools.count(1)

            def args(i: int, writer: str) -> tuple[list[str], list[Any]]:
                scope = f"s{i}"
                keys = log._keys(scope)  # the event log's own key layout
                return [keys.stream, keys.meta], ["0", 1000, 3600, keys.tail, f"{writer}{i}", next(batch), PAYLOAD]

            async def alone() -> None:
                await asyncio.gather(*(script(*args(i, "a")) for i in range(appends)))

            async def pipelined() -> None:
                async with redis.pipeline(transaction=False) as pipe:
                    for i in range(appends):
                        keys, argv = args(i, "p")
                        pipe.evalsha(script.sha, len(keys), *keys, *argv)
                    await pipe.execute()

            async def batched() -> None:
                await asyncio.gather(*(log.append_many(f"s{i}", [PAYLOAD]) for i in range(appends)))

            async def alone_sequential() -> None:
                for i in range(appends // 10):
                    await script(*args(i, "s"))

            async def sequential() -> None:
                for i in range(appends // 10):
                    await log.append_many(f"s{i}", [PAYLOAD])

            await alone()  # warm: the script is loaded, the pool holds its connections
            results = {
                "redis-py, one call each": await _timed(alone, appends, rounds),
                "redis-py, one pipeline": await _timed(pipelined, appends, rounds),
                "EventLog.append_many": await _timed(batched, appends, rounds),
                "redis-py, one at a time": await _timed(alone_sequential, appends // 10, rounds),
                "EventLog, one at a time": await _timed(sequential, appends // 10, rounds),
            }
            await log.aclose()
        finally:
            await redis.aclose()
            await valkey.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a second or so")
    parser.add_argument("--appends", type=int, default=1000, help="concurrent appends per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.appends, args.rounds = 100, 2
    results = uvloop.run(measure(args.appends, args.rounds))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base = results["redis-py, one call each"]["cpu_us_per_append"]
    print(f"{args.appends} concurrent appends (\"one at a time\": {args.appends // 10} in a row), "
          f"median of {args.rounds} rounds:")
    print(table(["path", "CPU µs per append", "wall ms", "CPU vs one call each"],
                [[name, f"{r['cpu_us_per_append']:.1f}", f"{r['wall_ms']:.1f}", f"{r['cpu_us_per_append'] / base:.2f}"]
                 for name, r in results.items()]))


if __name__ == "__main__":
    main()
