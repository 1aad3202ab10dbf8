"""The listen backlog setting reaches the gRPC and edge listening sockets.

While the event loop is blocked nothing is accepted, so the kernel completes
handshakes only until the listener's accept queue (its backlog, plus one) is
full; later connection attempts stay pending. Counting the connections that
complete therefore reads the backlog the sockets were given.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daveloper.app import open_app
from daveloper.config import Address, Settings

pytestmark = pytest.mark.timeout(60)

_ATTEMPTS = 200


def completed_connections(address: Address, attempts: int, *, wait: float) -> int:
    """Open ``attempts`` connections at once and count those whose handshake completes within ``wait``.

    Runs synchronously on purpose: the caller's event loop (the server's) is
    blocked meanwhile, so the server accepts none of them.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(attempts):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((address.host, address.port))
            sockets.append(sock)
        pending = {sock.fileno(): sock for sock in sockets}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        done = 0
        deadline = time.monotonic() + wait
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                sock = pending.pop(fd)
                poller.unregister(fd)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()


def somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


@pytest.mark.parametrize("backlog", [16, 2048])
async def test_the_backlog_setting_reaches_both_listeners(settings: Settings, redis: aioredis.Redis,
                                                          backlog: int) -> None:
    if somaxconn() < _ATTEMPTS:
        pytest.skip("net.core.somaxconn caps every backlog below this test's burst")
    async with open_app(settings.replace(listen_backlog=backlog)) as app:
        assert app.web is not None
        # Full queues hold further handshakes back for good (the loop stays blocked), so the short
        # wait only bounds the test: a generous backlog completes every connection at once.
        grpc = completed_connections(app.grpc_addr, _ATTEMPTS, wait=2.0)
        edge = completed_connections(app.web.addr, _ATTEMPTS, wait=2.0)
    expected = min(_ATTEMPTS, backlog + 1)
    assert grpc == expected
    assert edge == expected


def test_the_backlog_comes_from_the_environment() -> None:
    assert Settings.from_env({}).listen_backlog == 2048
    assert Settings.from_env({"DAVELOPER_LISTEN_BACKLOG": "4096"}).listen_backlog == 4096
