"""Child-process helpers for servers we own: die with the parent, liveness, stopping."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daveloper.errors import Unavailable

__all__ = ["POLL_SECONDS", "alive", "die_with_parent", "kill_and_wait"]

#: prctl(2) option: signal to deliver to the child when the thread that forked it exits.
PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.02


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGTERM the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolve everything before fork: between fork and exec the child may only
    # make simple calls (another thread may have held the import or malloc locks).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, term, kill = os.getpid(), int(signal.SIGTERM), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, term)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), kill)

    return preexec


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (Linux, via /proc); zombies are gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def kill_and_wait(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, SIGKILL it after ``timeout``; wait until gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        else:
            return
    raise Unavailable(f"could not stop process {pid}")
