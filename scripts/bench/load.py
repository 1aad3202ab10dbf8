"""Load on the scale-out deployment: many browser-style chat sessions for a minute, vs a bare aiohttp WebSocket.

**The cluster** runs as in production, on one machine: an embedded Valkey (started
by this process, unix socket) as the shared Redis, two ``daveloper serve --role grpc``
processes (each registers in ``dv:instances`` and has its own data dir, so its own
Qdrant local mode) and two ``daveloper serve --role edge`` processes that find them
through Redis. The chat provider is the offline one (no LLM configured): every turn
calls ``search_documents`` on the session's (empty) documents, then streams the
extractive answer "Nothing in this session's documents matches your question.", so a
turn takes the agent's whole path (guard, conversation, tool round, event log on
Redis, forwarders) in milliseconds. Log level WARNING; rate limits, quotas, the
per-session socket cap and the per-instance turn admission limits are lifted as in
``_app.py`` (all sessions share one client address).

With ``--redis-cluster`` the same deployment runs a second time, right after the
first and with the same client, sessions and seeds, on a **Valkey Cluster of 3
primaries and 3 replicas** (``tests/cluster/valkey_cluster.py``, the test suite's
cluster, from the same bundled ``valkey-server``) in place of the single Valkey:
``DAVELOPER_REDIS_URL=redis+cluster://…``, sharded pub/sub, every session's keys on
the node its hash tag picks. Its Valkey figures are the six nodes' together.

**The client** (this process, uvloop, one aiohttp ``ClientSession``) creates N sessions
(``POST /daveloper.v1.SessionService/CreateSession``), opens one socket per session
(``daveloper.v1.json``, ``hello`` with its token), split evenly across the two edges,
and opens one long-lived ``AgentService/Chat`` stream per socket, as the web page
does (``static/app.js``): credit 16, 8 more granted per 8 messages taken, the send
window honoured. Then for D seconds every session chats in its own conversation: it
sends a ``msg`` with a question, reads until ``turnCompleted``, thinks for a random
time (uniform, ``random.Random`` seeded per session; default 10-20 s) and asks again;
the first question comes after a random time up to the mean think time, so the
turns arrive at their steady rate from the start rather than all at once. After D
seconds no new turn starts; the running ones finish, then every session sends
``end`` and waits for its stream's ``close`` (``ok``).

The default think time keeps the offered load below what 2 cores serve: a turn costs
the cluster's processes 12-15 ms of CPU in all, so 1000 sessions thinking 1-3 s would
offer up to 500 turns/s against a capacity of about 130, and the run would measure a
queue (``--think 1-3`` shows that saturation; ``--quick`` uses 1-3 s with 60 sessions for 4 s).
The client parses with ``json.loads`` only frames that are not ``msg`` and, per turn,
the ``turnStarted`` and ``turnCompleted`` events (turn id and owning instance); other
events are counted by prefix.

Every error counts: a failed connect or handshake, a socket that closes, a stream
closed before the end or not ``ok``, ``turnFailed``, a turn not completed within
30 s, a completed turn whose id is not the started one. A session that meets one
stops there. Memory: ``VmRSS`` of every server process (edges, gRPC instances,
Valkey) and of this client, sampled every 2 s from ``/proc``; before the sockets
open, when the load starts, its peak, at its end, the growth over the second half of
the load, and 2 s after the sockets closed. CPU: ``utime + stime`` from ``/proc`` over
the load, per process, per turn.

**The baseline** runs next in this same process with the same client code, the same
N sockets, seeds and think times, against a **bare aiohttp WebSocket server** (one
process, uvloop, no Redis, same heartbeat and frame limit as the edge). It answers
``hello`` with a ``welcome`` frame and ``open`` with a ``headers`` frame; it
``json.loads`` every frame it gets, and answers each chat ``msg`` at once with as
many ``msg`` frames as the cluster delivered per turn on average, each of the
cluster's mean frame size and built with ``json.dumps`` (the first a ``turnStarted``,
the last a ``turnCompleted`` with the turn id), plus a ``credit`` frame per 8
messages, and ``end`` with an ``ok`` ``close``. It creates no sessions (the client
skips ``CreateSession``), stores nothing and runs no agent: it is the floor of what
the same socket traffic costs, not a chat server.

    .venv/bin/python -m scripts.bench.load [--quick] [--sessions 1000] [--seconds 60] [--think 10-20]
                                           [--redis-cluster] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import uvloop
from aiohttp import WSMsgType, web
from redis.asyncio.cluster import RedisCluster

from daveloper.infra.process import die_with_parent
from daveloper.infra.valkey import EmbeddedValkey
from scripts.bench._stats import percentile, rss_of, table
from tests.cluster.valkey_cluster import ValkeyCluster

ROOT = Path(__file__).resolve().parents[2]
SUBPROTOCOL = "daveloper.v1.json"
CHAT = "/daveloper.v1.AgentService/Chat"
CREATE_SESSION = "/daveloper.v1.SessionService/CreateSession"
MSG = '{"type":"msg"'
CREDIT = 16  # what the web page opens with; it grants half of it at a time
SEND_WINDOW = 16
MAX_FRAME = 8 * 1024 * 1024
HEARTBEAT = 30.0  # the edge's with the default 120 s idle timeout
TURN_TIMEOUT = 30.0
STEP_TIMEOUT = 60.0  # connecting, handshake, closing
CONNECT_CONCURRENCY = 50  # sessions being created and sockets handshaking at once (listen backlog is 128)
SAMPLE_SECONDS = 2.0
DISCOVERY_SECONDS = 2.5  # edges re-read the registry every 2 s (InstanceRegistry.follow)
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUESTIONS = ("how do I configure retries for the upstream client", "what does the ingestion pipeline do with PDFs",
             "explain the rate limits per session", "where are conversation events stored",
             "how can I resume a stream after a reconnect", "which embedder should I use for source code",
             "what happens when an instance is drained", "how large may an uploaded document be")
UNLIMITED = "1000000/s"


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- the bare aiohttp WebSocket server (its own process) ----------------------------------------------------


def bare_frames(stream_id: int, seq: int, turn: int, frames: int, size: int) -> list[str]:
    """One turn's answer: ``frames`` msg frames of about ``size`` bytes, turnStarted first, turnCompleted last."""
    turn_id = f"turn_bare_{turn:08d}"
    out = []
    for i in range(frames):
        kind = "turnStarted" if i == 0 else "turnCompleted" if i == frames - 1 else "tokenDelta"
        body = {"owner": "bare"} if kind == "turnStarted" else {"text": ""}
        event = {"seq": str(seq + i), "turnId": turn_id, kind: body}
        frame = {"type": "msg", "id": stream_id, "message": {"event": event}}
        pad = size - len(json.dumps(frame, separators=(",", ":")))
        if pad > 0:
            event["pad"] = "x" * pad
        out.append(json.dumps(frame, separators=(",", ":")))
    return out


async def bare_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME)
    await ws.prepare(request)
    frames, size = request.app[SHAPE]
    seq = turns = 0
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        kind = frame["type"]
        if kind == "hello":
            await ws.send_str(json.dumps({"type": "welcome", "session": "", "limits": {
                "initialCredit": CREDIT, "sendWindow": SEND_WINDOW}}, separators=(",", ":")))
        elif kind == "open":
            await ws.send_str(json.dumps({"type": "headers", "id": frame["id"], "metadata": {}}, separators=(",", ":")))
        elif kind == "msg":
            turns += 1
            for data in bare_frames(frame["id"], seq + 1, turns, frames, size):
                await ws.send_str(data)
            seq += frames
            if turns % (SEND_WINDOW // 2) == 0:
                await ws.send_str(json.dumps({"type": "credit", "id": frame["id"], "n": SEND_WINDOW // 2},
                                          separators=(",", ":")))
        elif kind == "end":
            await ws.send_str(json.dumps({"type": "close", "id": frame["id"], "status": {"code": "ok"}},
                                         separators=(",", ":")))
    return ws


SHAPE: web.AppKey[tuple[int, int]] = web.AppKey("shape", tuple)


async def serve_bare(frames: int, size: int) -> None:
    """Serve ``/ws`` until stdin closes; the first stdout line is the URL."""
    app = web.Application()
    app[SHAPE] = (frames, size)
    app.router.add_get("/ws", bare_socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent goes
    finally:
        await runner.cleanup()


# -- server processes -------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process seen from here: its role, its pid, where it listens and its log file."""

    name: str
    process: asyncio.subprocess.Process | None
    pid: int
    address: str = ""
    log: Path | None = None
    #: Where the log stood once the server was ready: problems are counted from here.
    log_offset: int = 0


async def spawn(name: str, argv: list[str], *, env: dict[str, str] | None, log: Path,
                tasks: set[asyncio.Task[None]]) -> Server:
    """Start a process whose first stdout line ends with its address; stderr goes to ``log``."""
    with open(log, "wb") as stderr:  # noqa: ASYNC230 - a local file, before the process exists
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr, start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop them in order
            preexec_fn=die_with_parent())
    server = Server(name, process, process.pid, log=log)
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)).decode()
    except TimeoutError:
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT:g} s; see {log}") from None
    if not line:
        code = await process.wait()
        raise RuntimeError(f"{name} exited with {code}: {log.read_text()[-2000:]}")  # noqa: ASYNC240
    server.address = line.split()[-1]
    tasks.add(asyncio.create_task(drain(process.stdout)))
    return server


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def stop(servers: list[Server]) -> None:
    """SIGTERM (and close stdin of) every process, SIGKILL those still running after ``STOP_TIMEOUT``."""
    running = [s.process for s in servers if s.process is not None and s.process.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        if process.stdin is not None:
            process.stdin.close()
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await asyncio.gather(*(p.wait() for p in running))
    finally:
        for process in running:
            if process.returncode is None:
                process.kill()
                await process.wait()


def log_problems(server: Server) -> list[str]:
    """The WARNING and ERROR records (and tracebacks) in a server's log since it was ready."""
    if server.log is None or not server.log.exists():
        return []
    with server.log.open("rb") as log:
        log.seek(server.log_offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [line[:500] for line in lines if '"WARNING"' in line or '"ERROR"' in line or "Traceback" in line]


def cluster_env(root: Path, name: str, role: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    env.update({
        "DAVELOPER_ROLE": role, "DAVELOPER_REDIS_URL": redis_url, "DAVELOPER_INSTANCE_ID": name,
        "DAVELOPER_DATA_DIR": str(root / name), "DAVELOPER_LOG_LEVEL": "WARNING", "DAVELOPER_LLM_PROVIDER": "offline",
        "DAVELOPER_SECRET_KEY": "load-benchmark-key", "DAVELOPER_DRAIN_SECONDS": "5",
        "DAVELOPER_RATE_CHAT_TURNS": UNLIMITED, "DAVELOPER_RATE_UPLOADS": UNLIMITED,
        "DAVELOPER_RATE_SCRAPES": UNLIMITED, "DAVELOPER_RATE_CALLS": UNLIMITED, "DAVELOPER_RATE_SESSIONS": UNLIMITED,
        "DAVELOPER_QUOTA_CONCURRENT_TURNS": str(10**6), "DAVELOPER_WS_MAX_SOCKETS_PER_SESSION": str(10**6),
        # Every turn is admitted, as in the other whole-app benchmarks: on a machine loaded by other work the
        # per-instance limit of turns being started (64) refuses some, which measures the load, not the path.
        "DAVELOPER_MAX_RUNNING_TURNS": str(10**6), "DAVELOPER_MAX_STARTING_TURNS": str(10**6),
    })
    return env


@contextlib.asynccontextmanager
async def open_redis(root: Path, cluster: bool) -> AsyncIterator[tuple[str, Any, list[Server]]]:
    """One embedded Valkey, or (``cluster``) a 3 primary + 3 replica Valkey Cluster; yields (URL, client, nodes)."""
    if not cluster:
        async with EmbeddedValkey(root / "redis") as valkey, aioredis.Redis.from_url(valkey.url) as redis:
            assert valkey.pid is not None
            yield valkey.url, redis, [Server("valkey", None, valkey.pid)]
        return
    nodes = ValkeyCluster(root / "redis-cluster")
    await asyncio.to_thread(nodes.start)
    try:
        first = nodes.primaries[0]
        async with RedisCluster(host="127.0.0.1", port=first.port) as redis:
            yield nodes.url, redis, [Server(f"valkey-{'primary' if n in nodes.primaries else 'replica'}-{i % 3 + 1}",
                                            None, n.process.pid) for i, n in enumerate(nodes.nodes)
                                     if n.process is not None]
    finally:
        await asyncio.to_thread(nodes.stop)


@contextlib.asynccontextmanager
async def open_cluster(root: Path, *, redis_cluster: bool = False,
                       ) -> AsyncIterator[tuple[list[Server], list[Server], list[Server]]]:
    """Valkey (or a Valkey Cluster), 2 gRPC instances, 2 edges, ready and discovered; yields (grpc, edges, valkeys)."""
    tasks: set[asyncio.Task[None]] = set()
    servers: list[Server] = []
    async with open_redis(root, redis_cluster) as (redis_url, redis, valkeys):
        try:
            roles = {"grpc-1": "grpc", "grpc-2": "grpc", "edge-1": "edge", "edge-2": "edge"}
            for started in asyncio.as_completed([spawn(
                    name, ["-m", "daveloper", "serve", "--role", role, f"--{role}-addr", "127.0.0.1:0"],
                    env=cluster_env(root, name, role, redis_url), log=root / f"{name}.log", tasks=tasks)
                    for name, role in roles.items()]):
                servers.append(await started)  # each one, so that a failed start still stops the others
            servers.sort(key=lambda s: s.name)
            grpc, edges = servers[2:], servers[:2]
            async with asyncio.timeout(START_TIMEOUT):
                while await redis.zcard("dv:instances") < len(grpc):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                async with aiohttp.ClientSession() as http:
                    for edge in edges:
                        while True:
                            async with http.get(f"{edge.address}/readyz") as response:
                                if response.status == 200:
                                    break
                            await asyncio.sleep(0.2)
            await asyncio.sleep(DISCOVERY_SECONDS)  # every edge has applied the listing with both instances
            for server in servers:  # start-up warnings (an edge up before the instances) are not the load's
                server.log_offset = server.log.stat().st_size if server.log else 0
            yield grpc, edges, valkeys
        finally:
            try:
                await stop(servers)
            finally:
                for task in tasks:
                    task.cancel()


@contextlib.asynccontextmanager
async def open_bare(root: Path, frames: int, size: int) -> AsyncIterator[Server]:
    tasks: set[asyncio.Task[None]] = set()
    server = await spawn("bare", ["-m", "scripts.bench.load", "--serve-bare", "--frames", str(frames),
                                  "--frame-bytes", str(size)], env=None, log=root / "bare.log", tasks=tasks)
    try:
        yield server
    finally:
        try:
            await stop([server])
        finally:
            for task in tasks:
                task.cancel()


# -- the client ---------------------------------------------------------------------------------------------


class Failure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Tally:
    """What the sessions saw."""

    connected: int = 0
    turns: int = 0
    events: int = 0
    event_bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    first_event: list[float] = field(default_factory=list)
    owners: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {detail[:300]}")


class ChatSession:
    """One browser-style client: a socket, one long-lived Chat stream, one conversation."""

    def __init__(self, index: int, ws: aiohttp.ClientWebSocketResponse, tally: Tally, seed: int) -> None:
        self.index = index
        self.ws = ws
        self.tally = tally
        self.rng = random.Random(seed * 1_000_003 + index)
        self.conversation = f"conv_load_{index:06d}"
        self.window = SEND_WINDOW
        self.consumed = 0
        self.sent = 0

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, index: int, tally: Tally, seed: int,
                      create_session: bool) -> ChatSession:
        token = ""
        if create_session:
            async with http.post(f"{url}{CREATE_SESSION}", json={}) as response:
                if response.status != 200:
                    raise Failure("connect", f"CreateSession: HTTP {response.status} {await response.text()}")
                token = (await response.json())["token"]
        ws = await http.ws_connect(f"{url}/ws", protocols=(SUBPROTOCOL,), max_msg_size=MAX_FRAME)
        await ws.send_str(json.dumps({"type": "hello", "token": token}))
        msg = await ws.receive(timeout=STEP_TIMEOUT)
        if msg.type is not WSMsgType.TEXT or json.loads(msg.data)["type"] != "welcome":
            await ws.close()
            raise Failure("connect", f"no welcome: {msg.type.name} {str(msg.data)[:200]}")
        await ws.send_str(json.dumps({"type": "open", "id": 1, "method": CHAT, "credit": CREDIT}))
        return cls(index, ws, tally, seed)

    async def chat(self, deadline: float, think: tuple[float, float]) -> None:
        """Turn, think, turn ... until ``deadline`` (``loop.time()``); then end the stream."""
        loop = asyncio.get_running_loop()
        try:
            # Spread the first questions over one mean think time: the steady rate from the start.
            await asyncio.sleep(min(self.rng.uniform(0, sum(think) / 2), deadline - loop.time()))
            while loop.time() < deadline:
                await self.turn()
                await asyncio.sleep(max(0.0, min(self.rng.uniform(*think), deadline - loop.time())))
            await self.finish()
        except Failure as failure:
            self.tally.fail(failure.kind, failure.detail)
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.tally.fail("socket error", f"session {self.index}: {exc!r}")
        finally:
            await self.ws.close()

    async def turn(self) -> None:
        while self.window <= 0:  # the edge grants more as it forwards our messages upstream
            self.control(await self.receive())
        self.sent += 1
        self.window -= 1
        text = f"{self.rng.choice(QUESTIONS)} (question {self.sent})"
        await self.ws.send_str(json.dumps({"type": "msg", "id": 1, "message": {"send": {
            "conversationId": self.conversation, "text": text, "clientMessageId": f"m{self.sent}"}}}))
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(TURN_TIMEOUT):
                await self.follow(sent)
        except TimeoutError:
            raise Failure("timeout", f"session {self.index}: turn {self.sent} not completed "
                                     f"in {TURN_TIMEOUT:g} s") from None

    async def follow(self, sent: float) -> None:
        """Read the turn's events until ``turnCompleted``."""
        turn_id = ""
        while True:
            data = await self.receive()
            if not data.startswith(MSG):
                self.control(data)
                continue
            now = time.perf_counter()
            if not turn_id and '"turnStarted"' not in data:
                raise Failure("protocol", f"session {self.index}: first event is not turnStarted: {data[:200]}")
            self.tally.events += 1
            self.tally.event_bytes += len(data)
            self.consumed += 1
            if self.consumed * 2 >= CREDIT:
                await self.ws.send_str(f'{{"type":"credit","id":1,"n":{self.consumed}}}')
                self.consumed = 0
            if not turn_id:
                self.tally.first_event.append(now - sent)
                event = json.loads(data)["message"]["event"]
                turn_id = event["turnId"]
                self.tally.owners[event["turnStarted"].get("owner", "")] += 1
            elif '"turnCompleted"' in data or '"turnFailed"' in data:
                event = json.loads(data)["message"]["event"]
                if "turnFailed" in event:
                    raise Failure("turn failed", f"session {self.index}: {event['turnFailed']}")
                if event["turnId"] != turn_id:
                    raise Failure("protocol", f"session {self.index}: completed {event['turnId']}, not {turn_id}")
                self.tally.latencies.append(now - sent)
                self.tally.turns += 1
                return

    async def finish(self) -> None:
        """Half-close the Chat stream and wait for its ``ok`` close."""
        await self.ws.send_str('{"type":"end","id":1}')
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while True:
                    data = await self.receive()
                    if not data.startswith(MSG) and self.control(data, closing=True) == "close":
                        return
        except TimeoutError:
            raise Failure("timeout", f"session {self.index}: no close {STEP_TIMEOUT:g} s after end") from None

    async def receive(self) -> str:
        msg = await self.ws.receive()
        if msg.type is not WSMsgType.TEXT:
            raise Failure("socket closed", f"session {self.index}: {msg.type.name} code {self.ws.close_code}")
        return str(msg.data)

    def control(self, data: str, *, closing: bool = False) -> str:
        """Handle a frame that is not a response message; its type."""
        frame = json.loads(data)
        kind = frame["type"]
        if kind == "credit":
            self.window += frame["n"]
        elif kind == "close":
            status = frame["status"]
            if not closing:
                raise Failure("stream closed", f"session {self.index}: during the load: {status}")
            if status.get("code") != "ok":
                raise Failure("stream closed", f"session {self.index}: not ok at the end: {status}")
        elif kind == "goaway":
            raise Failure("goaway", f"session {self.index}: {frame}")
        elif kind not in ("headers", "pong", "msg"):
            raise Failure("protocol", f"session {self.index}: unexpected frame {data[:200]}")
        return str(kind)


class Sampler:
    """RSS of some processes every ``SAMPLE_SECONDS``, with the time since ``started``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.started = time.perf_counter()

    def take(self) -> dict[str, int]:
        sample = {name: rss_of(pid) for name, pid in self.pids.items()}
        self.samples.append((time.perf_counter() - self.started, sample))
        return sample

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self.take()


async def drive(urls: list[str], pids: dict[str, int], args: argparse.Namespace,
                create_session: bool) -> dict[str, Any]:
    """Connect ``args.sessions`` sockets across ``urls``, chat for ``args.seconds``, close; the figures."""
    pids = {**pids, "client": os.getpid()}
    tally = Tally()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    await asyncio.sleep(SAMPLE_SECONDS)
    before = {name: rss_of(pid) for name, pid in pids.items()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def connect(index: int) -> ChatSession | None:
            async with gate:
                try:
                    async with asyncio.timeout(STEP_TIMEOUT):
                        session = await ChatSession.connect(http, urls[index % len(urls)], index, tally, args.seed,
                                                            create_session)
                except Failure as failure:
                    tally.fail(failure.kind, failure.detail)
                    return None
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    tally.fail("connect", f"session {index}: {exc!r}")
                    return None
                tally.connected += 1
                return session

        phase = time.perf_counter()
        sessions = [s for s in await asyncio.gather(*(connect(i) for i in range(args.sessions))) if s is not None]
        connect_seconds = time.perf_counter() - phase
        await asyncio.sleep(SAMPLE_SECONDS)  # the streams are open upstream, the sockets settled
        sampler = Sampler(pids)
        start = sampler.take()
        cpu_start = {name: cpu_of(pid) for name, pid in pids.items()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.seconds
        sampling = asyncio.create_task(sampler.run())
        try:
            started = time.perf_counter()
            await asyncio.gather(*(s.chat(deadline, args.think) for s in sessions))
            elapsed = time.perf_counter() - started
        finally:
            sampling.cancel()
        cpu = {name: cpu_of(pid) - cpu_start[name] for name, pid in pids.items()}
        end = sampler.take()
    await asyncio.sleep(SAMPLE_SECONDS)
    after = {name: rss_of(pid) for name, pid in pids.items()}
    load = [s for t, s in sampler.samples if t <= elapsed + SAMPLE_SECONDS]
    middle = min(sampler.samples, key=lambda ts: abs(ts[0] - elapsed / 2))[1]
    turns = max(tally.turns, 1)
    memory = {name: {"before": before[name], "start": start[name], "peak": max(s[name] for s in load),
                     "end": end[name], "last_half_growth": end[name] - middle[name], "after_close": after[name]}
              for name in pids}
    return {
        "sessions": args.sessions, "connected": tally.connected, "connect_seconds": connect_seconds,
        "seconds": elapsed, "turns": tally.turns, "turns_per_s": tally.turns / elapsed, "events": tally.events,
        "events_per_s": tally.events / elapsed, "events_per_turn": tally.events / turns,
        "event_bytes": tally.event_bytes / max(tally.events, 1),
        "latency_ms": {f"p{q}": percentile(tally.latencies, q) * 1e3 for q in (50, 90, 99)} if tally.latencies else {},
        "first_event_ms": ({f"p{q}": percentile(tally.first_event, q) * 1e3 for q in (50, 99)}
                           if tally.first_event else {}),
        "errors": sum(tally.errors.values()), "error_kinds": dict(tally.errors), "error_samples": tally.error_samples,
        "owners": dict(tally.owners),
        "cpu_s": cpu, "cpu_ms_per_turn": {name: seconds / turns * 1e3 for name, seconds in cpu.items()},
        "memory": memory, "rss_samples": [[round(t, 1), s] for t, s in sampler.samples],
    }


# -- driver ---------------------------------------------------------------------------------------------------


def per_socket(result: dict[str, Any], names: list[str]) -> float:
    """RSS growth of ``names`` from before the sockets opened to the load's start, per connected socket."""
    memory = result["memory"]
    growth: int = sum(memory[n]["start"] - memory[n]["before"] for n in names)
    return growth / max(int(result["connected"]), 1)


async def deployment(root: Path, args: argparse.Namespace, *, redis_cluster: bool) -> dict[str, Any]:
    """Start the scale-out deployment on one Valkey or a Valkey Cluster, drive the load, stop it; the figures."""
    root.mkdir()  # noqa: ASYNC240 - an empty local directory, before anything runs
    async with open_cluster(root, redis_cluster=redis_cluster) as (grpc, edges, valkeys):
        servers = [*edges, *grpc, *valkeys]
        result = await drive([e.address for e in edges], {s.name: s.pid for s in servers}, args, True)
        result["server_log_problems"] = {s.name: log_problems(s) for s in servers}
    names = [s.name for s in servers]
    per_turn = result["cpu_ms_per_turn"]
    per_turn["all servers"] = sum(per_turn[n] for n in names)
    per_turn["edges"] = sum(per_turn[e.name] for e in edges)
    per_turn["grpc"] = sum(per_turn[g.name] for g in grpc)
    per_turn["valkey"] = sum(per_turn[v.name] for v in valkeys)
    result["rss_per_socket"] = {"edges": per_socket(result, [e.name for e in edges]),
                                "all servers": per_socket(result, names)}
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)  # stop the servers on the way out
    results: dict[str, Any] = {"config": {
        "sessions": args.sessions, "seconds": args.seconds, "think": list(args.think), "seed": args.seed,
        "fd_limit": raise_fd_limit(), "cores": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="daveloper-load-") as tmp:
        root = Path(tmp)
        cluster = await deployment(root / "single", args, redis_cluster=False)
        if args.redis_cluster:
            results["redis_cluster"] = await deployment(root / "redis-cluster", args, redis_cluster=True)
        frames = max(2, round(cluster["events_per_turn"]))
        size = round(cluster["event_bytes"])
        async with open_bare(root, frames, size) as bare_server:
            bare = await drive([bare_server.address], {"bare": bare_server.pid}, args, False)
            bare["frames_per_turn"], bare["frame_bytes"] = frames, size
            bare["server_log_problems"] = {"bare": log_problems(bare_server)}
    bare["rss_per_socket"] = {"bare": per_socket(bare, ["bare"])}
    for side in (cluster, bare, *([results["redis_cluster"]] if args.redis_cluster else [])):
        side["servers_busy"] = sum(cpu for name, cpu in side["cpu_s"].items() if name != "client") / side["seconds"]
        side["client_busy"] = side["cpu_s"]["client"] / side["seconds"]
    results["cluster"], results["bare"] = cluster, bare
    results["ratios"] = {
        "turns/s": cluster["turns_per_s"] / bare["turns_per_s"],
        "turn latency p50": cluster["latency_ms"]["p50"] / bare["latency_ms"]["p50"],
        "turn latency p99": cluster["latency_ms"]["p99"] / bare["latency_ms"]["p99"],
        "cpu per turn (all servers)": cluster["cpu_ms_per_turn"]["all servers"] / bare["cpu_ms_per_turn"]["bare"],
        "cpu per turn (edges)": cluster["cpu_ms_per_turn"]["edges"] / bare["cpu_ms_per_turn"]["bare"],
        "rss per socket (edges)": cluster["rss_per_socket"]["edges"] / bare["rss_per_socket"]["bare"],
    }
    return results


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def report(results: dict[str, Any]) -> str:
    config, cluster, bare, ratios = results["config"], results["cluster"], results["bare"], results["ratios"]
    sides = (("deployment, one Valkey", cluster),
             *([("deployment, Valkey Cluster 3+3", results["redis_cluster"])] if "redis_cluster" in results else []),
             ("bare aiohttp", bare))

    def ms(figures: dict[str, float], *qs: int) -> str:
        return " / ".join(f"{figures[f'p{q}']:.1f}" for q in qs) if figures else "-"

    lines = [f"{config['sessions']} sessions, {config['seconds']:g} s of load, think "
             f"{config['think'][0]:g}-{config['think'][1]:g} s; bare server: {bare['frames_per_turn']} frames of "
             f"{bare['frame_bytes']} B per turn", table(
                 ["server", "connected", "turns", "turns/s", "events/s", "events/turn",
                  "turn latency p50 / p90 / p99 ms", "first event p50 / p99 ms", "errors"],
                 [[name, f"{r['connected']:,}", f"{r['turns']:,}", f"{r['turns_per_s']:,.0f}",
                   f"{r['events_per_s']:,.0f}", f"{r['events_per_turn']:.2f}", ms(r["latency_ms"], 50, 90, 99),
                   ms(r["first_event_ms"], 50, 99), r["errors"]] for name, r in sides])]
    for name, r in sides:
        if r["errors"]:
            lines.append(f"{name} errors: {r['error_kinds']}; first: {r['error_samples'][:3]}")
    mean_think = sum(config["think"]) / 2
    lines.append(f"turns per gRPC instance: {cluster['owners']}; cores busy over the load (of {config['cores']}): "
                 + ", ".join(f"{name} servers {r['servers_busy']:.2f} (client {r['client_busy']:.2f})"
                             for name, r in sides)
                 + (f"; the sessions offer at most {config['sessions'] / mean_think:,.0f} turns/s"
                    if mean_think else ""))

    def process_row(name: str, r: dict[str, Any], proc: str) -> list[str]:
        memory = r["memory"][proc]
        return [proc if proc != "client" else f"client ({name} run)", f"{r['cpu_s'][proc]:.1f}",
                f"{r['cpu_ms_per_turn'][proc]:.2f}", f"{r['cpu_s'][proc] / r['seconds']:.0%}",
                *(mib(memory[k]) for k in ("before", "start", "peak", "end")),
                f"{memory['last_half_growth'] / 2**20:+.1f}", mib(memory["after_close"])]

    lines += ["", "CPU over the load and memory (RSS MiB) per process", table(
        ["process", "CPU s", "CPU ms/turn", "busy", "RSS before sockets", "at load start", "peak", "end",
         "growth over 2nd half", "2 s after close"],
        [process_row(name, r, proc) for name, r in sides for proc in r["memory"]])]
    for name, r in sides[:-1]:
        lines.append(f"CPU ms per turn, {name}: all servers {r['cpu_ms_per_turn']['all servers']:.2f}, edges "
                     f"{r['cpu_ms_per_turn']['edges']:.2f}, gRPC {r['cpu_ms_per_turn']['grpc']:.2f}, Valkey "
                     f"{r['cpu_ms_per_turn']['valkey']:.2f}")
    lines.append(f"CPU ms per turn, bare {bare['cpu_ms_per_turn']['bare']:.2f}; "
                 f"RSS per socket KiB: edges {cluster['rss_per_socket']['edges'] / 1024:.1f}, "
                 f"bare {bare['rss_per_socket']['bare'] / 1024:.1f}")
    lines.append("ratios cluster/bare: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    problems = {name: found for _, r in sides for name, found in r["server_log_problems"].items() if found}
    if problems:
        lines.append(f"server log warnings/errors: { {n: len(p) for n, p in problems.items()} }; first: "
                     f"{next(iter(problems.values()))[:3]}")
    return "\n".join(lines)


def think_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX seconds, got {text!r}")
    return bounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent chat sessions (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the load (default 60)")
    parser.add_argument("--think", type=think_range, default=(10.0, 20.0), metavar="MIN-MAX",
                        help="think time between a turn's end and the next question, uniform (default 10-20 s; "
                             "1-3 s saturates 2 cores with 1000 sessions)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the think times and questions (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 sessions, 4 s, think 1-3 s")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run the deployment a second time on a 3 primary + 3 replica Valkey Cluster")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--frame-bytes", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        uvloop.run(serve_bare(args.frames, args.frame_bytes))
        return
    if args.quick:
        args.sessions, args.seconds, args.think = 60, 4.0, (1.0, 3.0)
    started = time.perf_counter()
    try:
        results = uvloop.run(run(args))
    except KeyboardInterrupt:
        print("load: interrupted; the servers were stopped", file=sys.stderr)
        sys.exit(130)
    except asyncio.CancelledError:
        sys.exit("load: stopped (SIGTERM); the servers were stopped")
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2))
        print(f"wall {wall:.0f} s", file=sys.stderr)
        return
    print(f"python {platform.python_version()}, uvloop {version('uvloop')}, aiohttp {aiohttp.__version__}; "
          f"{os.cpu_count()} cores shared by 4 server processes, Valkey and the client; "
          f"open-files limit {results['config']['fd_limit']}")
    print(report(results))
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()
