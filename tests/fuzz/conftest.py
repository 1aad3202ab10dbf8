"""Report the worst time and memory per fuzz category at the end of the run."""

from __future__ import annotations

import pytest

from tests.fuzz.budget import WORST


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not WORST:
        return
    terminalreporter.section("fuzz: worst case per category")
    for category, worst in sorted(WORST.items()):
        terminalreporter.write_line(
            f"{category:32} {worst.cases:5} cases  {worst.seconds:6.2f} s  {worst.bytes / 2**20:7.1f} MiB peak"
        )
