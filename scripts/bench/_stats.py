"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; samples need not be sorted."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summary_us(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 of samples in seconds, as microseconds."""
    return {f"p{q}": percentile(samples, q) * 1e6 for q in (50, 90, 99)}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def rss_of(pid: int) -> int:
    """Resident set size of a process in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
