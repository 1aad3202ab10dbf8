"""``daveloper health`` as a container runs it: a real process asking a real instance of each role."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daveloper.app import App, open_app
from daveloper.config import Address, Settings
from daveloper.gateway import Gateway, open_gateway
from tests.test_cli import free_port
from tests.test_tls import self_signed

pytestmark = pytest.mark.timeout(60)


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def health(env: dict[str, str], *args: str) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daveloper", "health", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without any DAVELOPER_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}


@pytest.fixture
async def grpc_app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[App]:
    async with open_app(settings.replace(role="grpc")) as running:
        yield running


@pytest.fixture
async def gateway(settings: Settings, grpc_app: App) -> AsyncIterator[Gateway]:
    edge = settings.replace(role="edge", upstreams=(grpc_app.grpc_addr,), edge_addr=Address("127.0.0.1", 0),
                            redis_url=None)
    async with open_gateway(edge) as running:
        yield running


async def test_a_grpc_instance_is_serving_until_it_drains(grpc_app: App, clean_env: dict[str, str]) -> None:
    env = clean_env | {"DAVELOPER_ROLE": "grpc", "DAVELOPER_GRPC_ADDR": str(grpc_app.grpc_addr),
                       "DAVELOPER_EDGE_ADDR": f"127.0.0.1:{free_port()}"}  # no edge: never asked
    ran = await health(env)
    assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err
    assert (await health(env, "--live")).code == 0

    # Draining: the health service says NOT_SERVING, then calls are refused; both mean "not ready"
    # but the process still answers, which is all liveness asks.
    grpc_app.health.set_draining()
    ran = await health(env)
    assert ran.code == 1
    assert ran.out == f"NOT_SERVING: gRPC {grpc_app.grpc_addr} health: NOT_SERVING\n"
    live = await health(env, "--live")
    assert live.code == 0
    assert live.out.startswith("SERVING (live;")

    await grpc_app.interceptor.drain(0)
    ran = await health(env)
    assert ran.code == 1
    assert ran.out.startswith(f"NOT_SERVING: gRPC {grpc_app.grpc_addr} health check: UNAVAILABLE")
    assert (await health(env, "--live")).code == 0


async def test_an_edge_is_ready_while_an_upstream_serves(gateway: Gateway, grpc_app: App,
                                                         clean_env: dict[str, str]) -> None:
    env = clean_env | {"DAVELOPER_ROLE": "edge", "DAVELOPER_EDGE_ADDR": str(gateway.edge.addr),
                       "DAVELOPER_GRPC_ADDR": f"127.0.0.1:{free_port()}"}  # no gRPC here: never asked
    ran = await health(env)
    assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err

    grpc_app.health.set_draining()
    ran = await health(env)
    assert ran.code == 1
    assert ran.out == f"NOT_SERVING: {gateway.edge.url}/readyz: HTTP 503 (upstreams down)\n"
    live = await health(env, "--live")  # /healthz: the edge itself is fine
    assert (live.code, live.out) == (0, "SERVING\n")

    await gateway.drain()
    ran = await health(env, "--edge", gateway.edge.url)
    assert ran.code == 1
    assert ran.out.startswith(f"NOT_SERVING: {gateway.edge.url}/readyz")


async def test_role_all_asks_grpc_and_the_edge(app: App, clean_env: dict[str, str]) -> None:
    env = clean_env | {"DAVELOPER_GRPC_ADDR": str(app.grpc_addr), "DAVELOPER_EDGE_ADDR": str(app.edge.addr)}
    for args in ((), ("--live",)):
        ran = await health(env, *args)
        assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err

    # Pointed elsewhere, each half is asked: a closed edge port fails the check although gRPC serves.
    closed = free_port()
    ran = await health(env | {"DAVELOPER_EDGE_ADDR": f"0.0.0.0:{closed}"})
    assert ran.code == 1
    assert ran.out.startswith(f"NOT_SERVING: http://127.0.0.1:{closed}/readyz: ")
    assert "gRPC" not in ran.out


async def test_explicit_addresses_override_the_role(app: App, clean_env: dict[str, str]) -> None:
    env = clean_env | {"DAVELOPER_ROLE": "edge"}  # its edge address (the default 8080) is not asked
    ran = await health(env, "--grpc", str(app.grpc_addr))
    assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err
    ran = await health(env, "--edge", app.edge.url, "--live")
    assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err

    closed = free_port()
    for args in (("--grpc", f"127.0.0.1:{closed}"), ("--edge", f"http://127.0.0.1:{closed}"),
                 ("--grpc", str(app.grpc_addr), "--edge", f"127.0.0.1:{closed}", "--live")):
        ran = await health(env, *args)
        assert ran.code == 1, args
        assert ran.out.startswith("NOT_SERVING: "), ran.out
        assert f":{closed}" in ran.out, ran.out


async def test_tls_instances_are_asked_over_tls(settings: Settings, redis: aioredis.Redis, tmp_path: Path,
                                                clean_env: dict[str, str]) -> None:
    cert, key = self_signed(tmp_path)
    async with open_app(settings.replace(tls_cert_file=cert, tls_key_file=key)) as app:
        env = clean_env | {"DAVELOPER_GRPC_ADDR": str(app.grpc_addr), "DAVELOPER_EDGE_ADDR": str(app.edge.addr),
                           "DAVELOPER_TLS_CERT_FILE": str(cert), "DAVELOPER_TLS_KEY_FILE": str(key)}
        ran = await health(env)
        assert (ran.code, ran.out) == (0, "SERVING\n"), ran.err
        # Without TLS the server cannot be understood: not serving, for all the check can tell.
        ran = await health(clean_env, "--grpc", str(app.grpc_addr))
        assert ran.code == 1


async def test_bad_settings_fail_with_exit_code_1(clean_env: dict[str, str]) -> None:
    """Docker reserves exit code 2 in health checks: a configuration error is reported as unhealthy."""
    ran = await health(clean_env | {"DAVELOPER_ROLE": "sideways"})
    assert ran.code == 1
    assert ran.out == "NOT_SERVING: role must be one of all, grpc, edge, got 'sideways'\n"
    ran = await health(clean_env, "--grpc", "nowhere")
    assert ran.code == 1
    assert ran.out.startswith("NOT_SERVING: --grpc: expected HOST:PORT")


async def test_the_command_does_not_import_the_server() -> None:
    """A health check runs every few seconds: it must not pay for Qdrant, the parsers or the LLM SDK."""
    script = ("import sys; from daveloper.cli import main; main(['health', '--grpc', '127.0.0.1:1', '--timeout', '1'])"
              "; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('qdrant_client', 'openai', 'numpy')"
              " or m in ('daveloper.app', 'daveloper.documents'))"
              "; print(heavy)")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert out.decode().splitlines()[-1] == "[]"
