"""A hostile-input run leaves no secret in any log line: the JSON log, pytest's capture of every record, Tail.

The server runs with known secrets (admin, metrics and GitHub tokens, LLM and
embedding API keys, the signing key); hostile requests carry them, mangled, on
every path (native gRPC with raw header bytes, HTTP/JSON, WebSocket); then every
captured record is searched for them. The run includes the other hostile shapes
that make the server log: malformed gRPC messages (invalid UTF-8, bytes that are
not the message, a deep ``Struct``, a huge page offset, no message at all) with
the secrets inside, header blocks and headers too large to be read, tokens too
large for the WebSocket ``hello``, and requests whose headers stop half-way
(closed by the header timeout) with a secret in what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.edge import Edge, open_edge
from daveloper.jsonlog import configure_logging
from daveloper.logredaction import secrets_of
from daveloper.logstream import LogPublisher, tail
from generated.daveloper.v1 import (
    CreateSessionRequest,
    GetSessionRequest,
    LogRecord,
    SessionServiceStub,
)
from tests.edge.client import connect
from tests.fuzz.raw_h2 import RawH2
from tests.fuzz.test_transport import _PREFACE, _frame, _literal
from tests.rpc.test_malformed_input import _field, nested_struct

pytestmark = pytest.mark.timeout(60)

ADMIN = "adm1n-Tok3n-for-the-hostile-run"
SECRETS = {
    "admin_token": ADMIN,
    "metrics_token": "metr1cs-Tok3n-hostile",
    "llm_api_key": "sk-hostile0123456789abcdefXYZ",
    "embedding_api_key": "emb3d-Key-hostile-run",
    "github_token": "ghp_hostile0123456789abcdefghijklmnop",
    "secret_key": "s1gning-Key-of-the-hostile-run",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The offline model although an API key is set: the key is only there to be leaked, or not.
    return settings.replace(**SECRETS, llm_provider="offline", github_api_url="http://127.0.0.1:9",
                            log_level="DEBUG", header_timeout_seconds=0.3)


@pytest.fixture
async def edge(app: App) -> AsyncIterator[Edge]:
    async with open_edge(app.settings, upstreams=[app.grpc_addr], health=app.health) as running:
        yield running


def _hostile_values(token: str) -> list[bytes]:
    """Each secret, spoiled so that no check can accept it: a control character, a non-ASCII one, lower case."""
    values = []
    for secret in (*SECRETS.values(), token):
        values += [f"Bearer {secret}\x01".encode(), f"Bearer {secret}é".encode(), f"Bearer {secret}é".encode("latin-1"),
                   f"bearer {secret}\x7f".encode(), f"Bearer {secret} {secret}".encode(), secret.encode()]
    return values


async def _hostile_run(app: App, edge: Edge, channel: Channel, token: str) -> None:
    raw = await RawH2.connect(app.grpc_addr.host, app.grpc_addr.port)
    try:
        for value in _hostile_values(token):
            for path in ("/daveloper.v1.SessionService/GetSession", "/daveloper.v1.LogsService/Tail",
                         "/daveloper.v1.DocumentService/ListDocuments"):
                await raw.call(path, [(b"authorization", value), (b"x-request-id", value[-12:])])
    finally:
        await raw.aclose()
    for secret in (*SECRETS.values(), token):
        with pytest.raises(GRPCError):  # a genuine client library, a token one character off
            await SessionServiceStub(channel).get_session(GetSessionRequest(), timeout=5,
                                                          metadata={"authorization": f"Bearer {secret}x"})
    async with aiohttp.ClientSession() as http:
        for secret in (*SECRETS.values(), token):
            for header in (f"Bearer {secret}\x01", f"Bearer {secret}é", f"Basic {secret}"):
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    async with http.post(f"{edge.url}/daveloper.v1.SessionService/GetSession", json={},
                                         headers={"Authorization": header}) as response:
                        await response.read()
            for hello in (f"{secret}\x01", f"{secret}é", f"{secret}\n{secret}"):
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, AssertionError):
                    client = await connect(http, edge, hello=False)
                    await client.send({"type": "hello", "token": hello})
                    await client.send({"type": "open", "id": 1, "method": "/daveloper.v1.SessionService/GetSession",
                                       "message": {}, "end": True})
                    with contextlib.suppress(Exception):
                        await client.recv()
                    await client.ws.close()


async def _malformed_grpc(app: App, token: str) -> None:
    """Malformed messages with the secrets inside, on one raw connection with the session's token."""
    auth = (b"authorization", f"Bearer {token}".encode())
    raw = await RawH2.connect(app.grpc_addr.host, app.grpc_addr.port)
    try:
        for secret in (*SECRETS.values(), token):
            value = secret.encode()
            for path, message in (
                    ("/daveloper.v1.DocumentService/ListDocuments", _field(2, value + b"\xff\xfe")),  # invalid UTF-8
                    ("/daveloper.v1.DocumentService/ListDocuments", bytes.fromhex("ffffffff0f12") + value),
                    ("/daveloper.v1.DocumentService/ListDocuments", _field(2, b"o:" + b"9" * 40 + value)),
                    ("/daveloper.v1.SessionService/CreateSession", _field(1, value) + b"\xff"),
                    ("/daveloper.v1.VectorService/UpsertPoints",  # the collection named by the secret
                     _field(1, value) + _field(2, _field(1, b"1") + _field(4, nested_struct(300)))),
                    ("/daveloper.v1.DocumentService/Search", _field(1, value[:-1] + b"\xc0"))):
                await raw.call(path, [auth, (b"x-hostile", value)], message)
            await raw.call("/daveloper.v1.DocumentService/ListDocuments", [auth, (b"x-hostile", value)], None)
    finally:
        await raw.aclose()


async def _oversized_and_unfinished(app: App, edge: Edge) -> None:
    """Header blocks and headers too large to read, and headers that stop half-way, each holding secrets."""
    grpc = (app.grpc_addr.host, app.grpc_addr.port)
    held: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []

    def header_block(secret: str, repeat: int) -> bytes:
        # Written byte by byte (a client's HPACK encoder takes seconds over a block this size).
        return b"".join(_literal(name, value, huffman=False) for name, value in (
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/daveloper.v1.SessionService/GetSession"),
            (b"content-type", b"application/grpc"), (b"authorization", f"Bearer {secret}".encode() * repeat)))

    for secret in SECRETS.values():
        reader, writer = await asyncio.open_connection(*grpc)
        block = header_block(secret, 3000)  # ~100 KiB: refused before h2 decodes it
        frames = [_frame(0x1 if i == 0 else 0x9, 0x4 if i + 16_384 >= len(block) else 0, 1, block[i:i + 16_384])
                  for i in range(0, len(block), 16_384)]
        writer.write(_PREFACE + _frame(0x4, 0, 0, b"") + b"".join(frames))
        readers.append(reader)
        held.append(writer)
    reader, writer = await asyncio.open_connection(*grpc)  # gRPC: a header block cut short
    writer.write(_PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0, 1, header_block(SECRETS["admin_token"], 1))[:-4])
    readers.append(reader)
    held.append(writer)
    edge_host, edge_port = edge.url.removeprefix("http://").rsplit(":", 1)
    for secret in SECRETS.values():  # the edge: a request whose headers never end
        reader, writer = await asyncio.open_connection(edge_host, int(edge_port))
        writer.write(f"POST /daveloper.v1.SessionService/GetSession HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {secret}\r\nX-Hostile: {secret}".encode())
        readers.append(reader)
        held.append(writer)
    try:
        async with asyncio.timeout(5):  # each is refused, or closed by the header timeout (0.3 s)
            for reader in readers:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
    finally:
        for writer in held:
            writer.close()
    async with aiohttp.ClientSession() as http:
        for secret in SECRETS.values():
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with http.post(f"{edge.url}/daveloper.v1.SessionService/GetSession", json={},
                                     headers={"Authorization": f"Bearer {secret}" * 4000}) as response:
                    await response.read()
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, AssertionError):
                client = await connect(http, edge, hello=False)
                await client.send({"type": "hello", "token": secret * 10_000})  # 4401 before any upstream call
                with contextlib.suppress(Exception):
                    await client.recv()
                await client.ws.close()


async def test_a_hostile_run_leaves_no_secret_in_any_log_record(
    app: App, edge: Edge, channel: Channel, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    json_lines = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_levels = list(root.handlers), {name: logging.getLogger(name).level
                                                         for name in ("", *logging.root.manager.loggerDict)}
    # The server's own logging, at its most verbose, as `daveloper serve` sets it up; then pytest's
    # capture of every record after it, and the live stream (LogsService.Tail's source).
    configure_logging("DEBUG", "test", stream=json_lines, secrets=secrets_of(app.settings))
    json_handler = root.handlers[0]
    root.removeHandler(json_handler)
    for handler in saved_handlers:  # the app's publisher first: its own filter must redact
        if isinstance(handler, LogPublisher):
            root.addHandler(handler)
    root.addHandler(json_handler)
    root.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    published: list[LogRecord] = []

    async def listen() -> None:
        async for record in tail(redis, lambda record: True):
            published.append(record)

    listener = asyncio.create_task(listen())
    token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)).token
    try:
        await asyncio.sleep(0.2)  # the listener subscribes
        await _hostile_run(app, edge, channel, token)
        await _malformed_grpc(app, token)
        await _oversized_and_unfinished(app, edge)
        # Third-party exception text with a secret in it, as an SDK would log it.
        try:
            raise ValueError(f"Invalid metadata value: {'Bearer ' + ADMIN + chr(1)!r}; "
                             f"Authorization: token {SECRETS['github_token']}")
        except ValueError:
            logging.getLogger("grpclib.client").exception("upstream call failed")
        await asyncio.sleep(0.5)  # let the publisher drain
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        for name, level in saved_levels.items():
            logging.getLogger(name or None).setLevel(level)

    secrets = [*SECRETS.values(), token, token.rsplit(".", 1)[1]]
    assert len(caplog.records) > 20, "nothing was logged: the test would prove nothing"
    assert published
    leaking = {record.name: record.getMessage()[:200] for record in caplog.records
               if any(secret in record.getMessage() or secret in repr(vars(record)) or
                      secret in (record.exc_text or "") for secret in secrets)}
    assert leaking == {}, "log records that hold a secret"
    assert [secret for secret in secrets if secret in json_lines.getvalue()] == []
    assert [record.message for record in published if any(secret in bytes(record).decode("utf-8", "replace")
                                                          for secret in secrets)] == []
    assert "[REDACTED]" in json_lines.getvalue()  # there was something to redact, and it was


async def test_the_app_redacts_its_live_log_stream_without_any_configured_handler(
    settings: Settings, redis: aioredis.Redis
) -> None:
    published: list[LogRecord] = []

    async def listen() -> None:
        async for record in tail(redis, lambda record: True):
            published.append(record)

    async with open_app(settings) as running:
        listener = asyncio.create_task(listen())
        try:
            await asyncio.sleep(0.2)
            logging.getLogger("daveloper.test").warning("the key is %s and the signing key %s",
                                                        SECRETS["llm_api_key"], running.settings.secret_key)
            async with asyncio.timeout(5):
                while not any(r.logger == "daveloper.test" for r in published):  # noqa: ASYNC110 (polls)
                    await asyncio.sleep(0.05)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    (record,) = [r for r in published if r.logger == "daveloper.test"]
    assert record.message == "the key is [REDACTED] and the signing key [REDACTED]"
