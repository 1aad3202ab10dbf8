"""The client commands (``chat``, ``ingest``, ``scrape``, ``doctor``) as a user runs them.

Each command is a real ``python -m daveloper`` process talking real gRPC to an
in-process server (the ``app`` fixture), which keeps serving because the test
awaits the process instead of blocking on it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from grpclib.client import Channel

from daveloper.app import App, open_app
from daveloper.client.terminal import ProgressBar, Terminal
from daveloper.config import Settings
from generated.daveloper.v1 import DocumentServiceStub, GetSessionRequest, ListDocumentsRequest, SessionServiceStub
from tests.grpc_helpers import bearer
from tests.test_tls import self_signed

pytestmark = pytest.mark.timeout(60)

NOTES = b"""# Notes

## Storage

The embedded Valkey keeps its append-only file under the data directory.
"""
CODE = b'def greeting() -> str:\n    """The greeting of the day."""\n    return "hello, world"\n'


@dataclass
class Ran:
    code: int
    out: str
    err: str
    seconds: float


class LocalSite:
    """A tiny website: a page linking to two others, and one that answers only after 20 s."""

    def __init__(self) -> None:
        self.port = 0
        self.release = asyncio.Event()  # lets the slow page go at teardown

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def app(self) -> web.Application:
        async def index(request: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text=(
                "<html><head><title>Garden</title></head><body><h1>Garden</h1>"
                "<p>Tomatoes need six hours of sun.</p><a href='/a'>a</a> <a href='/b'>b</a></body></html>"))

        async def page(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            return web.Response(content_type="text/html", text=(
                f"<html><head><title>Page {name}</title></head><body><h1>Page {name}</h1>"
                f"<p>Page {name} is about compost and mulch for the garden beds.</p></body></html>"))

        async def slow(request: web.Request) -> web.Response:
            try:
                async with asyncio.timeout(20):
                    await self.release.wait()
            except TimeoutError:
                pass
            return web.Response(content_type="text/html", text="<html><body><p>late</p></body></html>")

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/slow", slow)
        app.router.add_get("/{name}", page)
        return app


@pytest.fixture
async def site() -> AsyncIterator[LocalSite]:
    site = LocalSite()
    runner = web.AppRunner(site.app(), access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    site.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield site
    finally:
        site.release.set()
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings, site: LocalSite) -> Settings:
    """The server may fetch from the local site (and nothing else on loopback)."""
    return settings.replace(scrape_allow=(f"127.0.0.1:{site.port}",), scrape_timeout_seconds=30.0)


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no DAVELOPER_* settings, a private config dir."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    return clean | {"XDG_CONFIG_HOME": str(tmp_path / "config"), "DAVELOPER_DATA_DIR": str(tmp_path / "client-data"),
                    "NO_COLOR": "1"}


@pytest.fixture
def env(user_env: dict[str, str], app: App) -> dict[str, str]:
    """The same, with the server's address."""
    return user_env | {"DAVELOPER_GRPC_ADDR": str(app.grpc_addr)}


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daveloper", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run(env: dict[str, str], *args: str, stdin: str = "", within: float = 30) -> Ran:
    started = time.monotonic()
    process = await start(env, *args)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode(), time.monotonic() - started)


def cached_tokens(env: dict[str, str]) -> dict[str, str]:
    path = Path(env["XDG_CONFIG_HOME"]) / "daveloper" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens: dict[str, str] = json.loads(path.read_text())
    return tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ingest_then_chat_in_one_cached_session(tmp_path: Path, env: dict[str, str], app: App,
                                                      channel: Channel) -> None:
    docs = tmp_path / "docs"
    (docs / "src").mkdir(parents=True)
    (docs / "notes.md").write_bytes(NOTES)
    (docs / "src" / "greeting.py").write_bytes(CODE)
    (docs / ".secret.md").write_text("# Hidden\n\nnever uploaded\n")

    ingested = await run(env, "ingest", str(docs))
    assert ingested.code == 0, ingested.err
    assert "notes.md: stored doc_" in ingested.out
    assert "greeting.py: stored doc_" in ingested.out
    assert "secret" not in ingested.out + ingested.err
    assert "notes.md: receiving" in ingested.err  # not a terminal: one line per stage
    assert "notes.md: storing" in ingested.err
    assert "2 stored, 0 failed" in ingested.err

    # A second command reuses the cached session: it finds the documents the first one stored.
    answered = await run(env, "chat", "Where does the embedded Valkey keep its append-only file?")
    assert answered.code == 0, answered.err
    assert "append-only file under the data directory" in answered.out
    assert "[1] notes.md" in answered.out
    assert "→ search_documents" in answered.err  # tool calls go to stderr

    (token,) = cached_tokens(env).values()
    documents = await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(), timeout=5,
                                                                  metadata=bearer(token))
    assert sorted(d.name for d in documents.documents) == ["greeting.py", "notes.md"]

    # Without a message: a turn per line of stdin, in one conversation.
    looped = await run(env, "chat", stdin="What does greeting return?\n\nWhere is the append-only file?\n")
    assert looped.code == 0, looped.err
    assert looped.out.count("From your documents") == 2
    assert "hello, world" in looped.out
    assert "append-only file under the data directory" in looped.out
    assert looped.err.count("(conversation conv_") == 1
    assert cached_tokens(env) == {str(app.grpc_addr): token}


async def test_ingest_reports_a_bad_file_and_stores_the_good_one(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "notes.md").write_bytes(NOTES)
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 64)
    ran = await run(env, "ingest", str(tmp_path / "notes.md"), str(tmp_path / "garbage.bin"),
                    str(tmp_path / "missing.txt"))
    assert ran.code == 1
    assert "notes.md: stored doc_" in ran.out
    assert "1 stored, 2 failed" in ran.err
    assert "garbage.bin: FAILED: " in ran.err
    assert "binary" in ran.err
    assert "UNSUPPORTED_MEDIA_TYPE" in ran.err
    assert "missing.txt: no such file or directory" in ran.err


async def test_ingest_waits_out_the_upload_rate_limit(settings: Settings, redis: aioredis.Redis,
                                                     user_env: dict[str, str], tmp_path: Path) -> None:
    # 40 files against a budget of 5 uploads a second: without honouring RetryInfo most are refused.
    docs = tmp_path / "many"
    docs.mkdir()
    for number in range(40):
        (docs / f"note{number:02}.md").write_text(f"# Note {number}\n\nNote {number} is about topic {number}.\n")
    async with open_app(settings.replace(rate_uploads="5/s")) as app:
        ran = await run(user_env | {"DAVELOPER_GRPC_ADDR": str(app.grpc_addr)}, "ingest", str(docs), within=50)
        (token,) = cached_tokens(user_env).values()
        channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
        try:
            listed = await DocumentServiceStub(channel).list_documents(ListDocumentsRequest(page_size=100), timeout=5,
                                                                       metadata=bearer(token))
        finally:
            channel.close()
    assert ran.code == 0, ran.err
    assert "40 stored, 0 failed" in ran.err
    assert "retrying in" in ran.err  # the limit was reached, and waited out
    assert sorted(d.name for d in listed.documents) == [f"note{number:02}.md" for number in range(40)]


async def test_chat_resends_a_message_refused_by_the_turn_rate(settings: Settings, redis: aioredis.Redis,
                                                                user_env: dict[str, str]) -> None:
    async with open_app(settings.replace(rate_chat_turns="1/s")) as app:
        ran = await run(user_env | {"DAVELOPER_GRPC_ADDR": str(app.grpc_addr)}, "chat",
                        stdin="What is compost?\nWhat is mulch?\nWhat is soil?\n")
    assert ran.code == 0, ran.err
    assert "RATE_LIMITED); retrying in" in ran.err
    assert ran.out.count("Nothing in this session's documents matches your question.") == 3
    assert ran.err.count("(conversation conv_") == 1


async def test_a_refused_cached_token_is_replaced(env: dict[str, str], app: App, channel: Channel,
                                                 tmp_path: Path) -> None:
    cache = Path(env["XDG_CONFIG_HOME"]) / "daveloper" / "tokens.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({str(app.grpc_addr): "v1.not-a-real-token"}))
    (tmp_path / "notes.md").write_bytes(NOTES)
    ran = await run(env, "ingest", str(tmp_path / "notes.md"))
    assert ran.code == 0, ran.err
    token = cached_tokens(env)[str(app.grpc_addr)]
    assert token != "v1.not-a-real-token"
    session = await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5, metadata=bearer(token))
    assert session.session.labels == {"client": "daveloper-cli"}


async def test_a_tls_server_is_reached_with_its_ca(settings: Settings, redis: aioredis.Redis,
                                                   user_env: dict[str, str], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "notes.md").write_bytes(NOTES)
    async with open_app(settings.replace(tls_cert_file=cert, tls_key_file=key)) as app:
        args = ("ingest", str(tmp_path / "notes.md"), "--server", str(app.grpc_addr))
        trusted = await run(user_env, *args, "--tls-ca", str(cert))
        untrusted = await run(user_env, *args, "--tls")
    assert trusted.code == 0, trusted.err
    assert "notes.md: stored doc_" in trusted.out
    assert untrusted.code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.err


async def test_scrape_crawls_a_site_and_summarises(env: dict[str, str], site: LocalSite) -> None:
    ran = await run(env, "scrape", site.url("/"), "--depth", "1", "--same-site")
    assert ran.code == 0, ran.err
    assert "succeeded: fetched 3, skipped 0, failed 0, ingested 3" in ran.out
    assert f"fetched 200 {site.url('/a')} 'Page a'" in ran.err
    answered = await run(env, "chat", "How many hours of sun do tomatoes need?")
    assert "six hours of sun" in answered.out
    assert f"({site.url('/')})" in answered.out  # a scraped page is cited with its URL


async def test_scrape_of_a_blocked_address_fails_with_the_reason(env: dict[str, str]) -> None:
    ran = await run(env, "scrape", "http://169.254.169.254/latest/meta-data/")
    assert ran.code == 1
    assert "BLOCKED_ADDRESS" in ran.err
    assert "link-local" in ran.err


async def test_ctrl_c_cancels_the_crawl_job(env: dict[str, str], site: LocalSite) -> None:
    process = await start(env, "scrape", site.url("/slow"), "--depth", "0")
    assert process.stderr is not None
    try:
        await readline_with(process.stderr, "queued", within=15)
        await asyncio.sleep(0.3)  # let the fetch of the slow page begin
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            out, err = await process.communicate()
        assert time.monotonic() - interrupted < 5
        assert process.returncode == 130, err
        assert "cancelling the job" in err.decode()
        assert " cancelled: fetched 0" in out.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    err = io.StringIO()
    terminal = Terminal(out=io.StringIO(), err=err, live=True, color=False, interactive=False)
    bar = ProgressBar(terminal, "big.md")
    bar.update("RECEIVING", 64 * 1024, 128 * 1024)
    bar.update("RECEIVING", 128 * 1024, 128 * 1024)
    bar.update("EMBEDDING", 3, 3)
    terminal.note("big.md: stored")  # a note clears the bar, prints, then redraws the bar
    bar.close()
    drawn = err.getvalue()
    assert "\n" not in drawn.replace("big.md: stored\n", "")
    assert "big.md [############------------]  50% receiving 64.0 KiB/128.0 KiB" in drawn
    assert "big.md [########################] 100% embedding 3/3 chunks" in drawn
    assert drawn.endswith("\r\x1b[K")  # closed: the line is left clean


async def test_doctor_passes_in_a_good_environment(env: dict[str, str], redis_url: str, app: App) -> None:
    # The configured gRPC port is taken by the running server, which answers health.
    ran = await run(env | {"DAVELOPER_REDIS_URL": redis_url}, "doctor")
    assert ran.code == 0, ran.out + ran.err
    assert "all checks passed" in ran.out
    lines = ran.out.splitlines()
    assert any(line.startswith("OK") and "redis" in line and "answers PING" in line for line in lines)
    assert any(line.startswith("OK") and f"{app.grpc_addr} health: SERVING" in line for line in lines)
    assert not any(line.startswith("FAIL") for line in lines)


async def test_doctor_fails_fast_on_a_closed_redis_port(env: dict[str, str]) -> None:
    ran = await run(env | {"DAVELOPER_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}, "doctor")
    assert ran.code == 1
    (line,) = [line for line in ran.out.splitlines() if line.startswith("FAIL")]
    assert "redis" in line
    assert "not reachable" in line
    assert "DAVELOPER_REDIS_URL" in ran.out
    assert ran.seconds < 5


async def test_doctor_names_an_invalid_setting(env: dict[str, str]) -> None:
    ran = await run(env | {"DAVELOPER_LOG_LEVEL": "LOUD"}, "doctor")
    assert ran.code == 1
    assert "FAIL  settings" in ran.out
    assert "'LOUD'" in ran.out
    assert "fix DAVELOPER_LOG_LEVEL" in ran.out


async def test_doctor_says_when_the_llm_key_is_refused(env: dict[str, str]) -> None:
    async def models(request: web.Request) -> web.Response:  # an OpenAI-compatible endpoint's answer
        if request.headers.get("Authorization") != "Bearer right":
            return web.json_response({"error": {"message": "Incorrect API key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    llm = {"DAVELOPER_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "DAVELOPER_LLM_MODEL": "tiny"}
    try:
        refused = await run(env | llm | {"DAVELOPER_LLM_API_KEY": "wrong"}, "doctor")
        accepted = await run(env | llm | {"DAVELOPER_LLM_API_KEY": "right"}, "doctor")
    finally:
        await runner.cleanup()
    assert refused.code == 1
    assert any(line.startswith("FAIL") and "API key refused" in line for line in refused.out.splitlines())
    assert "DAVELOPER_LLM_API_KEY" in refused.out
    assert accepted.code == 0, accepted.out
    assert "model tiny" in accepted.out


async def readline_with(stream: asyncio.StreamReader, needle: str, within: float) -> str:
    seen = ""
    async with asyncio.timeout(within):
        while needle not in seen:
            line = await stream.readline()
            assert line, f"stream ended before {needle!r}: {seen}"
            seen += line.decode()
    return seen


async def test_ctrl_c_cancels_the_turn_and_returns_to_the_prompt(env: dict[str, str], site: LocalSite) -> None:
    process = await start(env, "chat")
    assert process.stdin is not None
    assert process.stderr is not None
    try:
        process.stdin.write(f"Summarise {site.url('/slow')} please\n".encode())
        await process.stdin.drain()
        await readline_with(process.stderr, "→ scrape_url", within=15)  # the turn now waits on the slow page
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        await readline_with(process.stderr, "turn cancelled", within=5)
        assert time.monotonic() - interrupted < 5
        # Back at the prompt: the next line is a new turn, and the end of input ends the command.
        process.stdin.write(b"Where is the garden?\n")
        process.stdin.close()
        async with asyncio.timeout(15):
            out, err = await process.communicate()
        assert process.returncode == 0, err
        # The second turn ran to its answer (the session has no documents to answer from).
        assert "Nothing in this session's documents matches your question." in out.decode()
        assert "→ search_documents" in err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_ctrl_c_of_a_single_message_exits_130(env: dict[str, str], site: LocalSite) -> None:
    process = await start(env, "chat", f"Summarise {site.url('/slow')}")
    assert process.stderr is not None
    try:
        await readline_with(process.stderr, "→ scrape_url", within=15)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            _, err = await process.communicate()
        assert time.monotonic() - interrupted < 5
        assert process.returncode == 130
        assert "turn cancelled" in err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
