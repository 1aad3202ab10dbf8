"""The benchmarks keep running (figures are recorded in docs/benchmarks.md, never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", ["scripts.bench.rpc_overhead", "scripts.bench.codec", "scripts.bench.documents",
                                    "scripts.bench.chat", "scripts.bench.scrape", "scripts.bench.cancel",
                                    "scripts.bench.edge", "scripts.bench.guard", "scripts.bench.load",
                                    "scripts.bench.watch", "scripts.bench.decode", "scripts.bench.appends"])
def test_benchmark_runs_and_reports_both_sides(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    # A failing benchmark shows why: its exit status alone says nothing.
    assert done.returncode == 0, (f"{module} exited {done.returncode}\n"
                                  f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    results = json.loads(done.stdout)
    if module.endswith("rpc_overhead"):
        assert set(results) == {"unary c=1", "unary c=8", "bidi ping-pong", "bidi pipelined"}
        for per_server in results.values():
            assert per_server["bare"][0]["rate"] > 0
            assert per_server["daveloper"][0]["rate"] > 0
    elif module.endswith("appends"):
        assert len(results) == 5
        assert all(path["cpu_us_per_append"] > 0 for path in results.values())
    elif module.endswith("chat"):
        assert results["baseline"]["tokens"] == results["full speed"]["tokens"] == 200 * 10
        assert results["turn start"]["turns"] == 200
        assert results["paced"]["tokens"] == 200 * 2
        assert results["saturated"]["turns"] + results["saturated"]["refused"] == 200
    elif module.endswith("scrape"):
        for crawler in ("daveloper", "scrapy"):
            assert results[crawler]["pages_per_s"] > 0
            assert results[crawler]["peak_rss_mib"] > 0
            assert [run["pages"] for run in results[crawler]["runs"]] == [200]
    elif module.endswith("cancel"):
        assert results["daveloper"]["upstream_closed"]["p50"] > 0
        assert results["daveloper"]["turn_completed"]["p50"] > 0
        assert results["sdk"]["upstream_closed"]["p50"] > 0
    elif module.endswith("documents"):
        assert results["ingestion"]["chunks"] == results["pipeline_floor"]["chunks"] > 0
        assert results["search"]["500"]["daveloper"]["p50"] > 0
    elif module.endswith("edge"):
        for path in ("bare websocket", "edge", "native gRPC"):
            assert results["unary"][path]["rate"] > 0
        for clients_on in ("edge", "native gRPC"):
            assert results["streaming"][clients_on]["tokens"] == 50 * 20
            assert results["streaming"][clients_on]["server_cpu_s"] > 0
        for socket in ("bare websocket", "edge"):
            assert results["idle"][socket]["traced_per_socket"] > 0
    elif module.endswith("guard"):
        assert set(results) == {"unary c=1", "unary c=8", "redis"}
        for workload in ("unary c=1", "unary c=8"):
            for variant in ("none", "auth", "auth + rate limit"):
                assert results[workload][variant][0]["rate"] > 0
        redis = results["redis"]
        assert redis["none"]["round_trips_per_call"] == 0
        assert redis["auth"]["round_trips_per_call"] >= 1
        # Admission pipelines the record read and the charge: one round trip carrying both.
        assert redis["auth + rate limit"]["sent_per_call"]["pipeline(hmget+evalsha)"] >= 1
        assert redis["buckets_present"] == {"session": True, "address": True}
        assert redis["audit_events"] == 0  # nothing was refused or failed authentication
    elif module.endswith("load"):
        for side in ("cluster", "bare"):
            run = results[side]
            assert run["connected"] == run["sessions"] == 60
            assert run["turns"] > 0
            assert run["events_per_turn"] >= 2
            assert run["errors"] == 0, run["error_samples"]
            assert all(memory["peak"] > 0 for memory in run["memory"].values())
        assert set(results["cluster"]["memory"]) == {"edge-1", "edge-2", "grpc-1", "grpc-2", "valkey", "client"}
        assert set(results["cluster"]["owners"]) == {"grpc-1", "grpc-2"}
        assert results["cluster"]["server_log_problems"] == {name: [] for name in results["cluster"]["memory"]
                                                             if name != "client"}
        assert results["ratios"]["cpu per turn (all servers)"] > 0
    elif module.endswith("watch"):
        for server in ("bare grpclib", "daveloper"):
            assert results[server]["replay"]["msgs_per_s"] > 0
            assert results[server]["idle"]["server_cpu_pct"] >= 0
    elif module.endswith("decode"):
        assert results["UploadRequest chunk (64 KiB)"]["checked µs"] > 0
        deep = results["Struct nested 30,000 deep"]
        assert (deep["betterproto2"]["outcome"], deep["checked"]["outcome"]) == (
            "RecursionError (INTERNAL)", "INVALID_ARGUMENT")
    else:
        assert results["encode (binary)"]["betterproto2"] > 0
        assert results["encode (binary)"]["protobuf upb"] > 0


@pytest.mark.timeout(120)
def test_ingest_benchmark_runs_and_reports_both_sides() -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.bench.ingest", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, f"exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    results = json.loads(done.stdout)
    assert results["ingestion"]["chunks"] == results["pipeline_floor"]["chunks"] > 0
    assert results["ingestion"]["worker_peak_rss_mib"] > 0
    health = results["health"]
    assert health["upload"]["checks"] > 0
    assert health["thread"]["checks"] > 0
    assert health["idle"]["health_us"]["p99"] > 0
