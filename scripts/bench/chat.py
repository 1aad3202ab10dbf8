"""Concurrent chat turns: tokens delivered to gRPC clients, added latency per token, CPU per 1k tokens.

The app runs on its embedded defaults (Valkey event log, Qdrant local mode) with a
local provider that emits tokens as fast as it can, each carrying the time it was
emitted. N clients each open a ``Chat`` stream and start one turn at the same time.
Latency per token is provider emit → client receive (through the turn, the
conversation's event log in Redis, and gRPC). Runs with token coalescing (the
default: 48 characters or 15 ms) and without it (one event per model delta).

    .venv/bin/python -m scripts.bench.chat [--quick] [--turns 200] [--tokens 100] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import re
import resource
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvloop
from grpclib.client import Channel

from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolSpec
from daveloper.app import open_app
from generated.daveloper.v1 import AgentServiceStub, ChatRequest, CreateSessionRequest, SendMessage, SessionServiceStub
from scripts.bench._app import bench_settings
from scripts.bench._stats import summary_us, table

STAMP = re.compile(r"<(\d+)>")


class StampedModel:
    """A local provider: ``tokens`` deltas, each ``<emit time in ns>``, as fast as the loop allows."""

    name = "stamped"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), model: str = "",
                     temperature: float | None = None, max_tokens: int = 0,
                     session_id: str = "") -> AsyncIterator[ModelEvent]:
        for _ in range(self.tokens):
            yield TextDelta(f"<{time.perf_counter_ns()}>")
            await asyncio.sleep(0)
        yield ModelDone("stop", prompt_tokens=1, completion_tokens=self.tokens)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_once(turns: int, tokens: int, coalesce_chars: int, data_dir: Path) -> dict[str, Any]:
    settings = bench_settings(data_dir, coalesce_chars=coalesce_chars)
    async with open_app(settings, chat_model=StampedModel(tokens)) as app:
        channels = [Channel(app.grpc_addr.host, app.grpc_addr.port) for _ in range(8)]
        try:
            token = (await SessionServiceStub(channels[0]).create_session(CreateSessionRequest(), timeout=10)).token
            latencies: list[float] = []
            received = events = 0

            async def client(i: int) -> None:
                nonlocal received, events
                stub = AgentServiceStub(channels[i % len(channels)])
                async for response in stub.chat([ChatRequest(send=SendMessage(text=f"turn {i}"))], timeout=300,
                                                metadata={"authorization": f"Bearer {token}"}):
                    if response.event.token_delta is not None:
                        now = time.perf_counter_ns()
                        stamps = STAMP.findall(response.event.token_delta.text)
                        latencies.extend((now - int(s)) / 1e9 for s in stamps)
                        received += len(stamps)
                        events += 1

            cpu, started = cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(turns)))
            elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        finally:
            for channel in channels:
                channel.close()
    assert received == turns * tokens, (received, turns * tokens)
    return {"tokens": received, "events": events, "seconds": elapsed, "tokens_per_s": received / elapsed,
            "cpu_ms_per_1k_tokens": cpu / received * 1e6, **summary_us(latencies)}


async def run(turns: int, tokens: int) -> dict[str, Any]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chars in (("coalesced (48 chars / 15 ms)", 48), ("one event per delta", 0)):
            results[name] = await run_once(turns, tokens, chars, Path(tmp) / name.split()[0])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200, help="concurrent turns (one Chat stream each)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per turn")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.tokens = 10, 20
    results = uvloop.run(run(args.turns, args.tokens))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.turns} concurrent turns x {args.tokens} tokens, one process (server and clients), uvloop")
    print(table(["delivery", "tokens/s", "events", "p50 / p90 / p99 ms per token", "CPU ms per 1k tokens"], [
        [name, f"{r['tokens_per_s']:,.0f}", f"{r['events']:,}",
         f"{r['p50'] / 1000:.0f} / {r['p90'] / 1000:.0f} / {r['p99'] / 1000:.0f}", f"{r['cpu_ms_per_1k_tokens']:.0f}"]
        for name, r in results.items()
    ]))


if __name__ == "__main__":
    main()
