"""The fuzzing budget: a fixed seed and a small example count in CI, more on request.

``DAVELOPER_FUZZ_EXAMPLES`` sets the example count of every property test
(the CI default is each test's own small number); ``DAVELOPER_FUZZ_SEED``
changes the seed. Each case is also measured, and the worst time and
memory per category is printed at the end of the run (see ``conftest.py``).
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from hypothesis import HealthCheck, seed, settings

SEED = int(os.environ.get("DAVELOPER_FUZZ_SEED", "20251128"))
#: Per case, generously: CI machines are slow and tracemalloc slows allocation down 2-3x.
MAX_SECONDS = 10.0
MAX_BYTES = 256 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., object])


def fuzz(examples: int) -> Callable[[F], F]:
    """Hypothesis settings for a property test: ``examples`` in CI, ``DAVELOPER_FUZZ_EXAMPLES`` when set."""
    count = int(os.environ.get("DAVELOPER_FUZZ_EXAMPLES", examples))

    def apply(test: F) -> F:
        configured = settings(max_examples=count, deadline=None, database=None, derandomize=False,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.large_base_example])(test)
        return seed(SEED)(configured)  # type: ignore[no-any-return]

    return apply


@dataclass
class Worst:
    seconds: float = 0.0
    bytes: int = 0
    cases: int = 0


#: category -> the worst case seen in this run.
WORST: dict[str, Worst] = {}


@contextmanager
def bounded(category: str) -> Iterator[None]:
    """Measure the block's time and peak traced memory; fail when either exceeds the bounds."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        worst = WORST.setdefault(category, Worst())
        worst.seconds, worst.bytes, worst.cases = max(worst.seconds, elapsed), max(worst.bytes, peak), worst.cases + 1
    assert elapsed < MAX_SECONDS, f"{category}: {elapsed:.1f} s"
    assert peak < MAX_BYTES, f"{category}: {peak / 2**20:.0f} MiB"
