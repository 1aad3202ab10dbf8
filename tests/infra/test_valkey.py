"""EmbeddedValkey: a real server process that answers, keeps its data, and never outlives its owner."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from daveloper.errors import ConfigError, Unavailable
from daveloper.infra.valkey import EmbeddedValkey
from tests.processes import alive, gone_within

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /proc")

REPO = Path(__file__).resolve().parents[2]

# Starts a server in a child Python, prints its pid, then either waits (to be
# SIGKILLed) or execs `sleep`: exec drops our close-on-exec data-dir lock without
# running any cleanup and without ending the forking thread, so the server lives
# on unowned, the state a crash leaves wherever PDEATHSIG is not available.
OWNER = """
import os, sys, time
from pathlib import Path
from daveloper.infra.valkey import EmbeddedValkey
server = EmbeddedValkey(Path(sys.argv[1]))
server.start_sync()
print(server.pid, flush=True)
if sys.argv[2] == "exec":
    os.execv("/bin/sleep", ["sleep", "60"])
time.sleep(60)
"""


def spawn_owner(data_dir: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    """The owner process and the pid of the server it started; use the owner as a context manager."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir), mode], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    return owner, int(owner.stdout.readline())


async def test_serves_keeps_data_under_data_dir_and_stops(data_dir: Path) -> None:
    async with EmbeddedValkey(data_dir) as server:
        pid = server.pid
        assert pid is not None
        assert alive(pid)
        assert server.url == f"unix://{data_dir}/valkey/valkey.sock"  # tmp_path is already resolved
        client = aioredis.Redis.from_url(server.url)
        await client.xadd("stream", {"token": "hello"}, id="1-1")
        await client.aclose()

    assert gone_within(pid, 0), "stop() returned with the server still running"
    assert not (data_dir / "valkey" / "valkey.sock").exists()
    assert (data_dir / "valkey" / "valkey.pid").read_text() == ""
    assert any((data_dir / "valkey" / "appendonlydir").iterdir())

    async with EmbeddedValkey(data_dir) as server:  # the stream survives a restart
        client = aioredis.Redis.from_url(server.url)
        assert await client.xrange("stream") == [(b"1-1", {b"token": b"hello"})]
        await client.aclose()


def test_sync_form(data_dir: Path) -> None:
    server = EmbeddedValkey(data_dir)
    server.start_sync()
    pid = server.pid
    assert pid is not None
    try:
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop_sync()
    assert not alive(pid)
    server.stop_sync()  # stopping twice is harmless


def test_stale_server_of_a_crashed_run_is_stopped_by_the_next_start(data_dir: Path) -> None:
    crashed, stale_pid = spawn_owner(data_dir, "exec")
    server = EmbeddedValkey(data_dir)
    with crashed:
        try:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{crashed.pid}/comm").read_text().strip() != "sleep":  # wait for the exec
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert alive(stale_pid)
            server.start_sync()
            assert not alive(stale_pid)
            assert server.pid != stale_pid
        finally:
            server.stop_sync()
            crashed.kill()


async def test_a_data_dir_in_use_is_refused(data_dir: Path) -> None:
    async with EmbeddedValkey(data_dir) as first:
        with pytest.raises(ConfigError, match=f"in use by another process .*pid {first.pid}"):
            await EmbeddedValkey(data_dir).start()
        client = aioredis.Redis.from_url(first.url)
        assert await client.ping()  # the owner's server was left alone
        await client.aclose()


def test_sigkilled_owner_leaves_no_orphan(data_dir: Path) -> None:
    owner, pid = spawn_owner(data_dir, "wait")
    with owner:
        assert alive(pid)
        owner.kill()
    assert gone_within(pid, 5), f"Valkey pid {pid} outlived its SIGKILLed owner"


async def test_missing_binary_is_a_config_error(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await EmbeddedValkey(data_dir, binary=data_dir / "no-such-valkey").start()
    async with EmbeddedValkey(data_dir):  # nothing was left locked
        pass


async def test_early_exit_reports_the_end_of_the_log(tmp_path: Path, data_dir: Path) -> None:
    binary = tmp_path / "broken-server"
    binary.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR' >&2\nexit 3\n")
    binary.chmod(0o755)
    with pytest.raises(Unavailable, match=r"(?s)exit code 3.*FATAL CONFIG FILE ERROR"):
        await EmbeddedValkey(data_dir, binary=binary).start()


async def test_deep_data_dir_puts_the_socket_in_a_short_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    async with EmbeddedValkey(deep) as server:
        socket = Path(server.url.removeprefix("unix://"))
        assert len(str(socket)) <= 107
        client = aioredis.Redis.from_url(server.url)
        assert await client.ping()
        await client.aclose()
        assert (deep / "valkey" / "appendonlydir").is_dir()  # data still lives in the data dir
    assert not socket.parent.exists()
