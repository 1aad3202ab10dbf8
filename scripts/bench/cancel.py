"""Chat cancel latency: from the cancel request to the upstream LLM HTTP stream being closed.

A local OpenAI-compatible ``POST /v1/chat/completions`` runs in its own process and
streams ``chat.completion.chunk`` SSE events (one every 10 ms, forever). It records
the moment it notices each client going away: aiohttp cancels the handler when the
connection drops (``handler_cancellation``), or a write fails. The timestamps are
``time.monotonic()``, one clock for every process on the machine.

* **daveloper**: the app on its embedded defaults with the ``openai`` provider
  pointed at that server. Per turn: a ``Chat`` stream sends ``SendMessage``, waits
  for the first ``token_delta``, then ``CancelTurn`` goes out on *another*
  connection. t0 is taken just before ``CancelTurn``; latency = the server's
  disconnect time - t0. Also: t0 → the ``turn_completed`` (finish reason
  ``cancelled``) reaching the Chat client.
* **openai SDK** (baseline): ``AsyncOpenAI`` streaming from the same server,
  closed with ``await stream.close()`` after the first content chunk; t0 just
  before ``close()``. Also: t0 → ``close()`` returning.

Turns run one at a time, alternating daveloper and the SDK.

    .venv/bin/python -m scripts.bench.cancel [--quick] [--turns 200] [--interval-ms 10] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import uvloop
from aiohttp import web
from grpclib.client import Channel

from daveloper.app import open_app
from daveloper.infra.process import die_with_parent
from generated.daveloper.v1 import (
    AgentServiceStub,
    CancelTurnRequest,
    ChatRequest,
    CreateSessionRequest,
    FinishReason,
    SendMessage,
    SessionServiceStub,
)
from scripts.bench._app import bench_settings
from scripts.bench._stats import percentile, table

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds any one step may take before the run is declared broken


# -- the upstream, in its own process -------------------------------------------------------------------

def serve_llm(interval: float) -> None:
    """Stream chunks every ``interval`` s until the client leaves; print ``<monotonic s>`` per departure."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"usage": None} if (body.get("stream_options") or {}).get("include_usage") else {}
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", ""), "system_fingerprint": None, **usage}

        def chunk(delta: dict[str, Any]) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            while True:
                await response.write(chunk({"content": "token "}))
                await asyncio.sleep(interval)
        except (ConnectionResetError, asyncio.CancelledError):
            print(time.monotonic(), flush=True)
            raise

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        # Cancel the handler as soon as its connection drops: that is the moment generation would stop.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    uvloop.run(main())


class Upstream:
    """The streaming server's process and the disconnect times it reports."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self._process = process
        self.url = url

    @classmethod
    async def start(cls, interval: float) -> Upstream:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.bench.cancel", "--serve-llm", "--interval-ms", str(interval * 1000),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent())
        upstream = cls(process, "")
        try:
            assert process.stdout is not None
            port = int(await asyncio.wait_for(process.stdout.readline(), WAIT))
        except BaseException:
            await upstream.stop()
            raise
        upstream.url = f"http://127.0.0.1:{port}/v1"
        return upstream

    async def disconnected(self) -> float:
        """When the server noticed the next client leave (``time.monotonic()``)."""
        assert self._process.stdout is not None
        return float(await asyncio.wait_for(self._process.stdout.readline(), WAIT))

    async def stop(self) -> None:
        self._process.terminate()
        await self._process.wait()


# -- the two clients ------------------------------------------------------------------------------------

async def sdk_turn(client: openai.AsyncOpenAI, upstream: Upstream) -> dict[str, float]:
    """Seconds from t0 to: the server seeing the disconnect, ``close()`` returning."""
    stream = await client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    t0 = time.monotonic()
    await stream.close()
    closed = time.monotonic()
    return {"upstream_closed": await upstream.disconnected() - t0, "close_returned": closed - t0}


async def daveloper_turn(chat: AgentServiceStub, cancel: AgentServiceStub, token: str,
                         upstream: Upstream) -> dict[str, float]:
    """Seconds from t0 to: the server seeing the disconnect, CancelTurn answered, ``turn_completed`` received."""
    metadata = {"authorization": f"Bearer {token}"}

    async def requests() -> AsyncIterator[ChatRequest]:
        yield ChatRequest(send=SendMessage(text="write forever"))  # then half-close: the turn streams to its end

    t0 = answered = 0.0
    async for response in chat.chat(requests(), timeout=WAIT, metadata=metadata):
        event = response.event
        if event.token_delta is not None and not t0:
            t0 = time.monotonic()
            reply = await cancel.cancel_turn(CancelTurnRequest(conversation_id=event.conversation_id,
                                                               turn_id=event.turn_id), timeout=WAIT, metadata=metadata)
            answered = time.monotonic()
            assert reply.cancelled
        elif event.turn_completed is not None:
            completed = time.monotonic()
            assert event.turn_completed.finish_reason == FinishReason.CANCELLED, event.turn_completed
            return {"upstream_closed": await upstream.disconnected() - t0, "cancel_answered": answered - t0,
                    "turn_completed": completed - t0}
        elif event.turn_failed is not None:
            raise RuntimeError(f"turn failed: {event.turn_failed.failure}")
    raise RuntimeError("the Chat stream ended without turn_completed")


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    return {**{f"p{q}": percentile(samples, q) * 1000 for q in (50, 90, 99)}, "max": max(samples) * 1000}


async def run(turns: int, interval: float) -> dict[str, Any]:
    upstream = await Upstream.start(interval)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = bench_settings(Path(tmp), llm_provider="openai", llm_base_url=upstream.url, llm_api_key="x")
            async with open_app(settings) as app:
                chat_channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
                cancel_channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
                client = openai.AsyncOpenAI(base_url=upstream.url, api_key="x")
                try:
                    token = (await SessionServiceStub(chat_channel).create_session(
                        CreateSessionRequest(), timeout=WAIT)).token
                    chat, cancel = AgentServiceStub(chat_channel), AgentServiceStub(cancel_channel)
                    # One untimed turn each: connections, imports and caches warm up.
                    await daveloper_turn(chat, cancel, token, upstream)
                    await sdk_turn(client, upstream)
                    samples: dict[str, dict[str, list[float]]] = {"daveloper": {}, "sdk": {}}
                    for _ in range(turns):
                        for name, turn in (("daveloper", daveloper_turn(chat, cancel, token, upstream)),
                                           ("sdk", sdk_turn(client, upstream))):
                            for key, seconds in (await turn).items():
                                samples[name].setdefault(key, []).append(seconds)
                finally:
                    await client.close()
                    chat_channel.close()
                    cancel_channel.close()
    finally:
        await upstream.stop()
    return {"turns": turns, "interval_ms": interval * 1000,
            **{name: {key: summary_ms(values) for key, values in per_key.items()}
               for name, per_key in samples.items()}}


def report(results: dict[str, Any]) -> str:
    def cells(s: dict[str, float]) -> str:
        return f"{s['p50']:.2f} / {s['p90']:.2f} / {s['p99']:.2f} / {s['max']:.2f}"

    d, s = results["daveloper"]["upstream_closed"], results["sdk"]["upstream_closed"]
    rows = [
        ["cancel → upstream saw the disconnect", cells(d), cells(s),
         " / ".join(f"{d[k] / s[k]:.1f}" for k in ("p50", "p90", "p99", "max"))],
        ["cancel → CancelTurn answered", cells(results["daveloper"]["cancel_answered"]), "-", "-"],
        ["cancel → turn_completed at the client (daveloper) / close() returned (SDK)",
         cells(results["daveloper"]["turn_completed"]), cells(results["sdk"]["close_returned"]), "-"],
    ]
    head = (f"{results['turns']} turns each, one at a time; upstream streams a chunk every "
            f"{results['interval_ms']:.0f} ms from its own process")
    return head + "\n" + table(["ms, p50 / p90 / p99 / max", "daveloper (CancelTurn RPC)", "openai SDK (close)",
                                "ratio daveloper/SDK"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200, help="cancelled turns per client")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="milliseconds between upstream chunks")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--serve-llm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_llm:
        serve_llm(args.interval_ms / 1000)
        return
    if args.quick:
        args.turns = 5
    results = uvloop.run(run(args.turns, args.interval_ms / 1000))
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
