"""Chat at scale: many concurrent turns through the app against an OpenAI-wire fake LLM in its own process.

Three processes: the fake LLM (``POST /v1/chat/completions``, real SSE chunks, each content piece
``<CLOCK_MONOTONIC ns>`` of its emission; the model name ``bench:<tokens>:<interval ms>`` says how many
and how fast), the app on its embedded defaults (Valkey, Qdrant local mode) with the ``openai``
provider pointed at it, and this driver (the gRPC clients). Phases, in one run:

* **baseline**: the same streams read straight from the fake LLM with bare aiohttp (SSE lines, stdlib
  json): tokens/s.
* **full speed**: ``--turns`` concurrent ``Chat`` turns of ``--tokens`` tokens each, as fast as the
  LLM emits: tokens/s, app + Valkey CPU per 1k tokens, first token p50/p99 (send → first
  ``token_delta``), LLM emit → client p50/p99.
* **turn start**: ``--turns`` one-token turns at once: app + Valkey CPU per turn, turns/s, Redis
  commands per turn.
* **paced**: ``--turns`` turns at ``--paced-interval-ms`` per token (2,000 ms: 0.5 token/s each),
  started evenly over one interval (``--no-paced-ramp``: all at once): LLM emit → client p50/p99
  over all tokens, in the steady state (tokens emitted after every turn had its first token: no
  turn is starting any more) and for each turn's last token (sent with the turn's end), delivered
  tokens/s, CPU per 1k tokens.
* **saturated**: the full-speed load against a second app with the default admission limits
  (``max_running_turns`` 500, ``max_starting_turns`` 64): turns admitted and refused (UNAVAILABLE,
  ``TURNS_SATURATED``, RetryInfo), admitted first token p50/p99.

CPU is the app process's (``/proc``) plus Valkey's (``INFO cpu``), read before and after each phase.
The app also reports, per phase, how late its loop ran (a 5 ms ticker) and the cyclic collector's
pauses per generation; it tunes its collector as ``daveloper serve`` does (``BENCH_DEFAULT_GC=1``:
CPython's defaults).

    .venv/bin/python -m scripts.bench.chat [--quick] [--turns 1000] [--tokens 50] [--json]
        [--profile {full,turn,paced}]   # cProfile of the app during that phase, top 40 by own time
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import gc
import json
import os
import re
import tempfile
import time
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from daveloper.infra.process import die_with_parent
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatOptions,
    ChatRequest,
    CreateSessionRequest,
    SendMessage,
    SessionServiceStub,
)
from scripts.bench._stats import percentile, table

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"<(\d+)>")
PHASES = ("baseline", "full speed", "turn start", "paced", "saturated")
STREAMS_PER_CHANNEL = 50  # below HTTP/2's usual 100 concurrent streams per connection


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # one clock for every process on the machine


# -- the fake LLM, in its own process ---------------------------------------------------------------------

def serve_llm() -> None:
    """Stream ``tokens`` stamped chunks ``interval`` ms apart, then finish reason and usage."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        _, tokens, interval = body["model"].split(":")
        count, pause = int(tokens), int(interval) / 1000
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": None, "usage": None}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        for _ in range(count):
            if pause:
                await asyncio.sleep(pause)
            await response.write(chunk({"content": f"<{_now_ns()}>"}))
        await response.write(chunk({}, "stop"))
        usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        await response.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"
                             .encode())
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    uvloop.run(main())


# -- the app, in its own process ----------------------------------------------------------------------------

def serve_app(llm_url: str, data_dir: str, limits: str, dump: str = "") -> None:
    """Run the app; print its port; answer ``cpu`` / ``profile`` / ``report`` lines on stdin with JSON."""
    import cProfile
    import io
    import pstats
    import resource

    from daveloper.app import open_app
    from daveloper.infra.heap import tune_collector
    from scripts.bench._app import bench_settings

    async def main() -> None:
        overrides: dict[str, object] = {"llm_provider": "openai", "llm_base_url": llm_url, "llm_api_key": "x",
                                        "llm_model": "bench:1:0"}
        if limits == "none":  # every turn admitted: the phases measure 1,000 concurrent turns
            overrides.update(max_running_turns=10**6, max_starting_turns=10**6)
        async with open_app(bench_settings(Path(data_dir), **overrides)) as app:
            if not os.environ.get("BENCH_DEFAULT_GC"):  # as `daveloper serve` does once ready
                tune_collector()
            print(app.grpc_addr.port, flush=True)
            reader = asyncio.StreamReader()
            await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                               sys.stdin)
            profile: cProfile.Profile | None = None
            stalls = Stalls()
            while line := (await reader.readline()).decode().strip():
                if line == "stalls":  # the loop's stalls and the collector's pauses since the last ask
                    print(json.dumps(stalls.take()), flush=True)
                elif line == "cpu":
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    valkey = await app.redis.info("cpu")
                    stats = await app.redis.info("commandstats")
                    print(json.dumps({"app": usage.ru_utime + usage.ru_stime,
                                      "valkey": valkey["used_cpu_sys"] + valkey["used_cpu_user"],
                                      "commands": sum(v["calls"] for v in stats.values()),
                                      "by_command": {k.removeprefix("cmdstat_"): v["calls"]
                                                     for k, v in stats.items()}}), flush=True)
                elif line == "profile":
                    profile = cProfile.Profile()
                    profile.enable()
                    print("{}", flush=True)
                elif line == "report" and profile is not None:
                    profile.disable()
                    if dump:
                        profile.dump_stats(dump)
                    out = io.StringIO()
                    stats = pstats.Stats(profile, stream=out)
                    stats.sort_stats("tottime").print_stats(40)
                    by_file: dict[str, float] = {}
                    for (path, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
                        by_file[path] = by_file.get(path, 0.0) + own
                    out.write("own time by file (s):\n")
                    for path, own in sorted(by_file.items(), key=lambda item: -item[1])[:40]:
                        out.write(f"{own:8.3f}  {path}\n")
                    print(json.dumps({"profile": out.getvalue()}), flush=True)

    uvloop.run(main())


class Stalls:
    """The loop's lateness (a 5 ms ticker) and the cyclic collector's pauses, per generation."""

    def __init__(self) -> None:
        self._lags: list[float] = []
        self._gc: dict[int, list[float]] = {}
        self._gc_start = 0.0
        gc.callbacks.append(self._collected)
        self._task = asyncio.create_task(self._tick())

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self._gc.setdefault(info["generation"], []).append(time.perf_counter() - self._gc_start)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            self._lags.append(loop.time() - due)

    def take(self) -> dict[str, Any]:
        lags, self._lags = self._lags, []
        pauses, self._gc = self._gc, {}
        return {"loop_lag_ms": {**_ms(lags), "max": max(lags, default=0) * 1000},
                "gc": {str(gen): {"count": len(times), "total_ms": sum(times) * 1000, "max_ms": max(times) * 1000}
                       for gen, times in sorted(pauses.items())}}


class Child:
    """A child process speaking one line at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *args: str) -> tuple[Child, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.bench.chat", *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent(), limit=2**24)
        child = cls(process)
        return child, await child.line(wait=60)

    async def line(self, wait: float = 30) -> str:
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), wait)).decode().strip()
        if not line:
            raise RuntimeError("child process ended")
        return line

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        result: dict[str, Any] = json.loads(await self.line())
        return result

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()


# -- the phases ----------------------------------------------------------------------------------------------

async def baseline(llm_url: str, turns: int, tokens: int) -> dict[str, Any]:
    """The same streams read straight from the LLM: aiohttp, SSE lines, stdlib json."""
    received = 0
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "model": f"bench:{tokens}:0"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one() -> None:
            nonlocal received
            async with http.post(f"{llm_url}/chat/completions", json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            received += len(STAMP.findall(choice["delta"].get("content") or ""))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(turns)))
        elapsed = time.perf_counter() - started
    return {"tokens": received, "seconds": elapsed, "tokens_per_s": received / elapsed}


async def chats(app: Child, port: int, token: str, turns: int, model: str, *, ramp: float = 0.0) -> dict[str, Any]:
    """``turns`` concurrent turns, started evenly over ``ramp`` seconds (0: all at once); tokens, latencies
    and the app's and Valkey's CPU over the phase."""
    channels = [Channel("127.0.0.1", port) for _ in range(max(1, turns // STREAMS_PER_CHANNEL))]
    latencies: list[float] = []
    emitted: list[int] = []  # the emit time of each latency sample
    first: list[float] = []
    first_at: list[int] = []  # when each turn's first token arrived
    last: list[float] = []  # each turn's last token: it goes out with the turn's end
    received = events = refused = 0
    metadata = {"authorization": f"Bearer {token}"}

    async def client(i: int) -> None:
        nonlocal received, events, refused
        stub = AgentServiceStub(channels[i % len(channels)])
        if ramp:
            await asyncio.sleep(i * ramp / turns)
        sent = time.perf_counter()
        request = ChatRequest(send=SendMessage(text=f"turn {i}", options=ChatOptions(model=model)))
        newest = (0, 0.0)  # this turn's latest-emitted token and its latency
        try:
            async for response in stub.chat([request], timeout=600, metadata=metadata):
                if response.event is None:
                    continue  # a heartbeat: the stream was quiet (a loaded machine, a slow first token)
                delta = response.event.token_delta
                if delta is not None:
                    now = _now_ns()
                    stamps = [int(stamp) for stamp in STAMP.findall(delta.text)]
                    latencies.extend((now - stamp) / 1e9 for stamp in stamps)
                    if stamps:
                        newest = max(newest, (stamps[-1], (now - stamps[-1]) / 1e9))
                    emitted.extend(stamps)
                    received += len(stamps)
                    events += 1
                    if sent:
                        first.append(time.perf_counter() - sent)
                        first_at.append(now)
                        sent = 0
                if response.event.turn_failed is not None:
                    raise RuntimeError(f"turn failed: {response.event.turn_failed.failure}")
        except GRPCError:
            refused += 1
        if newest[0]:
            last.append(newest[1])

    try:
        await app.ask("stalls")
        before = await app.ask("cpu")
        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(turns)))
        elapsed = time.perf_counter() - started
        after = await app.ask("cpu")
        stalls = await app.ask("stalls")
    finally:
        for channel in channels:
            channel.close()
    cpu = after["app"] - before["app"] + after["valkey"] - before["valkey"]
    return {"turns": turns - refused, "refused": refused, "tokens": received, "events": events, "seconds": elapsed,
            "tokens_per_s": received / elapsed, "turns_per_s": (turns - refused) / elapsed,
            "app_cpu_s": after["app"] - before["app"], "valkey_cpu_s": after["valkey"] - before["valkey"],
            "cpu_ms_per_1k_tokens": cpu / max(received, 1) * 1e6,
            "cpu_ms_per_turn": cpu / max(turns - refused, 1) * 1e3,
            "redis_commands_per_turn": (after["commands"] - before["commands"]) / max(turns - refused, 1),
            "redis_commands": {name: round((calls - before["by_command"].get(name, 0)) / max(turns - refused, 1), 2)
                               for name, calls in sorted(after["by_command"].items(), key=lambda item: -item[1])
                               if calls > before["by_command"].get(name, 0)},
            "latency_ms": _ms(latencies), "first_token_ms": _ms(first), "last_token_ms": _ms(last), **stalls,
            # Tokens emitted once every turn had its first token: streaming, no turn starting any more.
            "steady_latency_ms": _ms([latency for latency, at in zip(latencies, emitted, strict=True)
                                      if first_at and at >= max(first_at)])}


def _ms(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(samples, q) * 1000 for q in (50, 99)} if samples else {}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    llm, port = await Child.start("--serve-llm")
    llm_url = f"http://127.0.0.1:{port}/v1"
    try:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # the engine may still be closing
            app, port = await Child.start("--serve-app", llm_url, tmp, "none", args.profile_dump)
            try:
                channel = Channel("127.0.0.1", int(port))
                token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)).token
                channel.close()
                results: dict[str, Any] = {}
                await chats(app, int(port), token, 20, "bench:2:0")  # warm up: connections, caches
                phases = [("baseline", None), ("full speed", f"bench:{args.tokens}:0"), ("turn start", "bench:1:0"),
                          ("paced", f"bench:{args.paced_tokens}:{args.paced_interval_ms}")]
                for name, model in phases:
                    if name not in args.phases:
                        continue
                    if model is None:
                        results[name] = await baseline(llm_url, args.turns, args.tokens)
                        continue
                    profiling = args.profile and name.startswith(args.profile)
                    if profiling:
                        await app.ask("profile")
                    # Paced: the turns start over one token interval, so the LLM emits 500 tokens/s evenly rather
                    # than in waves whose shape would follow how fast the server starts turns.
                    ramp = args.paced_interval_ms / 1000 if name == "paced" and args.paced_ramp else 0.0
                    results[name] = await chats(app, int(port), token, args.turns, model, ramp=ramp)
                    if profiling:
                        results["profile"] = (await app.ask("report"))["profile"]
            finally:
                await app.stop()
            if "saturated" not in args.phases:
                return results
            # Saturation: the same full-speed load on an app with its default admission limits.
            app, port = await Child.start("--serve-app", llm_url, tmp + "/admit", "default")
            try:
                channel = Channel("127.0.0.1", int(port))
                token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)).token
                channel.close()
                await chats(app, int(port), token, 20, "bench:2:0")
                results["saturated"] = await chats(app, int(port), token, args.turns, f"bench:{args.tokens}:0")
            finally:
                await app.stop()
            return results
    finally:
        await llm.stop()


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lines = [f"{args.turns} concurrent turns; app, fake LLM and clients in 3 processes; uvloop; "
             f"{os.cpu_count()} cores", ""]
    base = r.get("baseline")
    rows = [["straight from the LLM (aiohttp)", f"{base['tokens_per_s']:,.0f}", "1.00", "", "", "", ""]] if base else []
    rows += [[f"{name} ({res['tokens'] // max(res['turns'], 1)} tokens/turn)", f"{res['tokens_per_s']:,.0f}",
              f"{res['tokens_per_s'] / base['tokens_per_s']:.3f}" if base else "",
              f"{res['cpu_ms_per_1k_tokens']:.0f}",
              f"{res['first_token_ms'].get('p50', 0):.0f} / {res['first_token_ms'].get('p99', 0):.0f}",
              f"{res['latency_ms'].get('p50', 0):.1f} / {res['latency_ms'].get('p99', 0):.1f}", f"{res['events']:,}"]
             for name in ("full speed", "paced") if (res := r.get(name))]
    if rows:
        lines.append(table(["phase", "tokens/s", "vs straight from LLM", "app+Valkey CPU ms / 1k tokens",
                            "first token p50 / p99 ms", "LLM emit → client p50 / p99 ms", "events"], rows))
    if paced := r.get("paced"):
        steady = paced["steady_latency_ms"]
        lines.append(f"\npaced, steady state (no turn starting): LLM emit → client p50 / p99 "
                     f"{steady.get('p50', 0):.1f} / {steady.get('p99', 0):.1f} ms")
        ending = paced["last_token_ms"]
        lines.append(f"paced, each turn's last token (sent with the turn's end): p50 / p99 "
                     f"{ending.get('p50', 0):.1f} / {ending.get('p99', 0):.1f} ms")
    for name in ("full speed", "paced"):
        if res := r.get(name):
            lag = res["loop_lag_ms"]
            pauses = ", ".join(f"gen{gen} {c['count']} x (total {c['total_ms']:.0f} ms, max {c['max_ms']:.1f} ms)"
                               for gen, c in res["gc"].items())
            lines.append(f"{name}: the app's loop late p50 / p99 / max {lag.get('p50', 0):.1f} / "
                         f"{lag.get('p99', 0):.1f} / {lag['max']:.0f} ms; collector pauses: {pauses or 'none'}")
    if start := r.get("turn start"):
        lines.append("")
        lines.append(table(["turn start (1-token turns)", "turns/s", "app+Valkey CPU ms / turn", "app / Valkey s",
                            "Redis commands / turn", "refused"], [
            ["", f"{start['turns_per_s']:,.0f}", f"{start['cpu_ms_per_turn']:.2f}",
             f"{start['app_cpu_s']:.2f} / {start['valkey_cpu_s']:.2f}", f"{start['redis_commands_per_turn']:.1f}",
             str(start["refused"])]]))
    if sat := r.get("saturated"):
        lines.append("")
        lines.append(table(["saturation (default limits: 500 running, 64 starting)", "admitted",
                            "refused (UNAVAILABLE + RetryInfo)", "admitted first token p50 / p99 ms", "tokens/s"], [
            ["", str(sat["turns"]), str(sat["refused"]),
             f"{sat['first_token_ms'].get('p50', 0):.0f} / {sat['first_token_ms'].get('p99', 0):.0f}",
             f"{sat['tokens_per_s']:,.0f}"]]))
    if "profile" in r:
        lines += ["", r["profile"]]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--serve-llm"]:
        serve_llm()
        return
    if sys.argv[1:2] == ["--serve-app"]:
        serve_app(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1000, help="concurrent turns (one Chat stream each)")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per turn at full speed")
    parser.add_argument("--paced-tokens", type=int, default=15, help="tokens per paced turn")
    parser.add_argument("--paced-interval-ms", type=int, default=2000, help="LLM pause before each paced token")
    parser.add_argument("--paced-ramp", action=argparse.BooleanOptionalAction, default=True,
                        help="start the paced turns evenly over one token interval (default) or all at once")
    parser.add_argument("--profile", choices=["full", "turn", "paced"], help="cProfile the app during a phase")
    parser.add_argument("--profile-dump", default="", metavar="PATH",
                        help="also write the profile's pstats to PATH (for callers and callees)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated phases to run (default all: {','.join(PHASES)})")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    args.phases = set(args.phases.split(","))
    if unknown := args.phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.quick:
        args.turns, args.tokens, args.paced_tokens, args.paced_interval_ms = 200, 10, 2, 200
    results = uvloop.run(run(args))
    print(json.dumps(results, indent=2) if args.json else report(args, results))


if __name__ == "__main__":
    main()
