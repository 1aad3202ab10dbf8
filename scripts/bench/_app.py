"""Settings for benchmarks that run the whole app: free ports, quiet logs, no rate limits or quotas.

The benchmarks measure throughput, so every client shares one loopback address
and one session would hit the production limits within seconds (the per-address
connection cap included: the edge benchmark holds 1,000 idle sockets).
"""

from __future__ import annotations

from pathlib import Path

from daveloper.config import Address, Settings

UNLIMITED = "1000000/s"


def bench_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "grpc_addr": Address("127.0.0.1", 0), "edge_addr": Address("127.0.0.1", 0), "data_dir": data_dir,
        "log_level": "WARNING", "instance_id": "bench",
        "rate_chat_turns": UNLIMITED, "rate_uploads": UNLIMITED, "rate_scrapes": UNLIMITED,
        "rate_calls": UNLIMITED, "rate_sessions": UNLIMITED,
        "quota_documents": 10**9, "quota_stored_bytes": 10**15, "quota_concurrent_turns": 10**6,
        "max_connections_per_address": 0,  # the benchmarks' clients all connect from 127.0.0.1
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
