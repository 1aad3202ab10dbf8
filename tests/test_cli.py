"""``daveloper serve`` as a user runs it: a real process, real grpcurl, real signals."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import alive, gone_within

pytestmark = pytest.mark.timeout(90)

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SERVICES = [
    "daveloper.v1.AgentService",
    "daveloper.v1.DocumentService",
    "daveloper.v1.LogsService",
    "daveloper.v1.ScraperService",
    "daveloper.v1.SessionService",
    "daveloper.v1.VectorService",
    "grpc.health.v1.Health",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[str]
    addr: str
    edge_url: str
    data_dir: Path

    def grpcurl(
        self, *args: str, data: str | None = None, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run grpcurl against the server: flags first, then the address, then ``args``."""
        flags = ["-plaintext", "-max-time", "10"]
        if token is not None:
            flags += ["-H", f"authorization: Bearer {token}"]
        if data is not None:
            flags += ["-d", data]
        return subprocess.run([GRPCURL, *flags, self.addr, *args], capture_output=True, text=True,
                              timeout=20, check=check)

    def valkey_pid(self) -> int:
        return int((self.data_dir / "valkey" / "valkey.pid").read_text().split()[0])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``daveloper serve`` with no configuration but a port and a data dir."""
    addr = f"127.0.0.1:{free_port()}"
    edge_addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    env["DAVELOPER_DRAIN_SECONDS"] = "2"
    process = subprocess.Popen(
        [sys.executable, "-m", "daveloper", "serve", "--grpc-addr", addr, "--edge-addr", edge_addr,
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until ready (or the process died)
    assert f"gRPC listening on {addr}" in line, process.stderr.read() if process.poll() is not None else line
    assert f"on http://{edge_addr}" in process.stdout.readline()
    served = Served(process, addr, f"http://{edge_addr}", tmp_path / "data")
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_grpcurl_lists_describes_checks_health_and_creates_a_session(served: Served) -> None:
    listed = served.grpcurl("list").stdout.split()
    assert sorted(s for s in listed if "reflection" not in s) == SERVICES

    described = served.grpcurl("describe", "daveloper.v1.AgentService").stdout
    assert "rpc Chat ( stream .daveloper.v1.ChatRequest ) returns ( stream .daveloper.v1.ChatResponse );" in described
    message = served.grpcurl("describe", "daveloper.v1.ChatEvent").stdout
    assert ".daveloper.v1.TokenDelta token_delta = 11;" in message

    health = served.grpcurl("grpc.health.v1.Health/Check", data='{"service": ""}')
    assert json.loads(health.stdout) == {"status": "SERVING"}
    per_service = served.grpcurl("grpc.health.v1.Health/Check", data='{"service": "daveloper.v1.DocumentService"}')
    assert json.loads(per_service.stdout) == {"status": "SERVING"}

    created = json.loads(served.grpcurl("daveloper.v1.SessionService/CreateSession",
                                        data='{"labels": {"via": "grpcurl"}}').stdout)
    assert created["token"].startswith("v1.")
    assert created["session"]["labels"] == {"via": "grpcurl"}

    got = served.grpcurl("daveloper.v1.SessionService/GetSession", data="{}", token=created["token"])
    assert json.loads(got.stdout)["session"]["id"] == created["session"]["id"]

    denied = served.grpcurl("daveloper.v1.SessionService/GetSession", data="{}", check=False)
    assert "Code: Unauthenticated" in denied.stderr


def test_the_edge_serves_the_page_and_http_json(served: Served) -> None:
    page = subprocess.run(["curl", "-sS", "-i", served.edge_url + "/"], capture_output=True, text=True, timeout=10,
                          check=True).stdout
    assert page.startswith("HTTP/1.1 200")
    assert "content-security-policy:" in page.lower()
    created = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}",
         served.edge_url + "/daveloper.v1.SessionService/CreateSession"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    assert json.loads(created)["token"].startswith("v1.")


def test_sigterm_drains_open_stream_with_a_status_and_stops_owned_valkey(served: Served) -> None:
    valkey = served.valkey_pid()
    assert alive(valkey)
    watch = subprocess.Popen(
        [GRPCURL, "-plaintext", "-max-time", "30", "-d", '{"service": ""}', served.addr,
         "grpc.health.v1.Health/Watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert watch.stdout is not None
    assert '"SERVING"' in "".join(watch.stdout.readline() for _ in range(3))

    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=15) == 0
    elapsed = time.monotonic() - started
    out, err = watch.communicate(timeout=10)
    # The open stream saw NOT_SERVING pushed, then ended with a proper status.
    assert '"NOT_SERVING"' in out
    assert "Code: Unavailable" in err
    assert "shutting down" in err
    assert elapsed < 2 + 5, elapsed  # drain deadline plus start-up slack, not a benchmark
    assert gone_within(valkey, 5), "embedded valkey survived the shutdown"
    assert served.process.stderr is not None
    tuned = [json.loads(line) for line in served.process.stderr.read().splitlines() if "collector tuned" in line]
    assert tuned
    assert tuned[0]["frozen_objects"] > 10_000  # start-up's heap, out of every later collection


def test_sigkill_of_the_server_leaves_no_valkey_behind(served: Served) -> None:
    valkey = served.valkey_pid()
    served.process.kill()
    served.process.wait(10)
    assert gone_within(valkey, 5), "embedded valkey orphaned after the owner was killed"


def test_grpcurl_uploads_a_document_and_searches_it(served: Served) -> None:
    token = json.loads(served.grpcurl("daveloper.v1.SessionService/CreateSession", data="{}").stdout)["token"]
    content = b"# Notes\n\n## Storage\n\nThe embedded Valkey keeps its append-only file under the data directory.\n"
    stream = "\n".join([
        json.dumps({"header": {"fileName": "notes.md", "sizeBytes": str(len(content))}}),
        json.dumps({"chunk": base64.b64encode(content[:40]).decode()}),
        json.dumps({"chunk": base64.b64encode(content[40:]).decode()}),
    ])
    uploaded = subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "20", "-H", f"authorization: Bearer {token}", "-d", "@",
         served.addr, "daveloper.v1.DocumentService/Upload"],
        input=stream, capture_output=True, text=True, timeout=30, check=True,
    )
    events = [json.loads(part) for part in uploaded.stdout.replace("}\n{", "}\0{").split("\0")]
    assert events[0]["event"]["seq"] == "1"
    document = events[-1]["event"]["stored"]
    assert (document["name"], document["mediaType"]) == ("notes.md", "text/markdown")

    found = json.loads(served.grpcurl("daveloper.v1.DocumentService/Search", token=token,
                                      data='{"query": "append-only file", "topK": 1}').stdout)
    hit = found["hits"][0]
    assert hit["chunk"]["documentId"] == document["id"]
    assert hit["chunk"]["location"]["headingPath"] == ["Notes", "Storage"]
