"""How long the server takes to start: ``daveloper serve`` to Health SERVING, and ``import daveloper.app``.

Each start is a fresh ``python -m daveloper serve`` process on the embedded defaults (its own
Valkey, the vector store in the data dir, the offline chat provider) on free loopback ports,
and a grpclib client polling ``grpc.health.v1.Health/Check`` (overall status) every 10 ms from
the moment the process is spawned; the process is then stopped with SIGTERM. The first start
creates the data dir and is not counted: the figures are for a warm data dir. Import times
are wall-clock times of ``python -c 'import daveloper.app'``. The baseline, in the same run,
is a bare ``python -c 'import grpclib, aiohttp, redis'`` (the interpreter plus the three
libraries any server here needs). Medians over N, starts and imports alternating.

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/startup.py [--quick] [--starts N] [--json]
    .venv/bin/python -m scripts.bench.startup [same flags]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from scripts.bench._stats import table

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _import_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, cwd=ROOT)
    return time.perf_counter() - started


async def _serving(port: int, deadline: float) -> None:
    while time.perf_counter() < deadline:
        channel = Channel("127.0.0.1", port)
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=0.5)
            if reply.status == HealthCheckResponse.SERVING:
                return
        except Exception:  # not listening yet, or not ready: poll again
            pass
        finally:
            channel.close()
        await asyncio.sleep(0.01)
    raise TimeoutError("the server did not report SERVING in time")


def start_seconds(data_dir: Path, timeout: float = 60.0) -> float:
    """Seconds from spawning ``daveloper serve`` to its first SERVING answer."""
    port = _free_port()
    env = {**os.environ, "DAVELOPER_DATA_DIR": str(data_dir), "DAVELOPER_GRPC_ADDR": f"127.0.0.1:{port}",
           "DAVELOPER_EDGE_ADDR": f"127.0.0.1:{_free_port()}", "DAVELOPER_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "daveloper", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(_serving(port, started + timeout))
        return time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(starts: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"bare import (grpclib, aiohttp, redis)": [], "import daveloper.app": [],
                                       "daveloper serve → SERVING (warm data dir)": []}
    with tempfile.TemporaryDirectory(prefix="daveloper-bench-startup-") as data_dir:
        start_seconds(Path(data_dir))  # creates the data dir: not counted
        for _ in range(starts):
            samples["bare import (grpclib, aiohttp, redis)"].append(_import_seconds("import grpclib, aiohttp, redis"))
            samples["import daveloper.app"].append(_import_seconds("import daveloper.app"))
            samples["daveloper serve → SERVING (warm data dir)"].append(start_seconds(Path(data_dir)))
    return {name: {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
                   "samples": values} for name, values in samples.items()}


def report(results: dict[str, Any]) -> str:
    base = results["bare import (grpclib, aiohttp, redis)"]["median_s"]
    rows = [[name, f"{entry['median_s']:.2f}", f"{entry['min_s']:.2f}-{entry['max_s']:.2f}",
             f"{entry['median_s'] / base:.1f}"] for name, entry in results.items()]
    return table(["what", "median s", "min-max s", "vs bare import"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=7, help="timed starts and imports of each (default 7)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 timed start")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    results = run(1 if args.quick else args.starts)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python {platform.python_version()}; medians of {1 if args.quick else args.starts} starts")
    print(report(results))


if __name__ == "__main__":
    main()
