"""The terminal side of the client commands: output streams, progress, Ctrl-C and stdin lines.

Results go to stdout; progress, tool calls and notes go to stderr, so
``daveloper chat "…" > answer.txt`` keeps only the answer. Progress redraws
one line with ``\\r`` when stderr is a terminal, and writes one line per stage
otherwise (logs and pipes stay readable).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Interrupts", "ProgressBar", "StdinLines", "Terminal", "human_bytes"]

_DIM, _RESET, _CLEAR_LINE = "\x1b[2m", "\x1b[0m", "\r\x1b[K"
_BAR_WIDTH = 24
_REDRAW_SECONDS = 0.1


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _chunks(count: float) -> str:
    return f"{count:.0f} chunk" if count == 1 else f"{count:.0f} chunks"


@dataclass
class Terminal:
    """Where output goes, and whether stderr can redraw and colour."""

    out: TextIO
    err: TextIO
    #: stderr is a terminal: progress redraws in place.
    live: bool
    #: dim text for side information (tool calls); off for pipes and with NO_COLOR.
    color: bool
    #: stdin is a terminal: the chat loop shows a prompt.
    interactive: bool
    _status: str = ""

    def write(self, text: str) -> None:
        """Answer text on stdout, as it arrives."""
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        """A result line on stdout."""
        self.clear_status()
        print(text, file=self.out, flush=True)

    def note(self, text: str, *, dim: bool = False) -> None:
        """A line on stderr (above the status line, which is redrawn)."""
        status = self._status
        self.clear_status()
        print(f"{_DIM}{text}{_RESET}" if dim and self.color else text, file=self.err, flush=True)
        if status:
            self.status(status)

    def status(self, text: str) -> None:
        """A line redrawn in place on a terminal; nothing otherwise (see :class:`ProgressBar`)."""
        if self.live:
            self._status = text
            self.err.write(_CLEAR_LINE + text)
            self.err.flush()

    def clear_status(self) -> None:
        if self._status:
            self._status = ""
            self.err.write(_CLEAR_LINE)
            self.err.flush()


class ProgressBar:
    """A file's progress through stages: a redrawn bar on a terminal, one line per stage elsewhere."""

    def __init__(self, terminal: Terminal, label: str) -> None:
        self._terminal = terminal
        self._label = label
        self._stage = ""
        self._done = 0
        self._drawn_at = 0.0

    def update(self, stage: str, done: int, total: int) -> None:
        new_stage = stage != self._stage
        self._done = done if new_stage else max(done, self._done)
        self._stage = stage
        # Units are bytes while receiving, chunks after (parsing has none worth showing).
        unit: Callable[[float], str] = human_bytes if stage == "RECEIVING" else _chunks
        amount = (f"{unit(self._done)}/{unit(total)}" if unit is human_bytes else f"{self._done}/{unit(total)}") \
            if total else unit(self._done)
        if not self._terminal.live:
            if new_stage:
                size = f" ({unit(total)})" if total and stage != "PARSING" else ""
                self._terminal.note(f"{self._label}: {stage.lower()}{size}")
            return
        now = time.monotonic()
        if not new_stage and now - self._drawn_at < _REDRAW_SECONDS and done < total:
            return  # redraws are throttled; the last one of a stage always shows
        self._drawn_at = now
        fraction = min(self._done / total, 1.0) if total else 0.0
        filled = round(fraction * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        self._terminal.status(f"{self._label} [{bar}] {fraction:4.0%} {stage.lower()} {amount}")

    def close(self) -> None:
        self._terminal.clear_status()


class Interrupts:
    """Ctrl-C as an event-loop callback instead of ``KeyboardInterrupt`` at a random await.

    While a handler is installed (:meth:`handling`) SIGINT calls it; otherwise
    SIGINT cancels the command's task, which ends it with exit status 130.
    Signal handlers exist only in the main thread; elsewhere (a command run from
    a test thread) SIGINT keeps its default behaviour.
    """

    def __init__(self) -> None:
        self._handler: Callable[[], None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._installed = False
        self.interrupted = False

    def __enter__(self) -> Interrupts:
        self._task = asyncio.current_task()
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._fire)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    @contextlib.contextmanager
    def handling(self, handler: Callable[[], None]) -> Iterator[None]:
        previous, self._handler = self._handler, handler
        try:
            yield
        finally:
            self._handler = previous

    def quit(self) -> None:
        """End the command (as an unhandled Ctrl-C does)."""
        self.interrupted = True
        if self._task is not None:
            self._task.cancel()

    def _fire(self) -> None:
        if self._handler is not None:
            self._handler()
        else:
            self.quit()


class StdinLines:
    """Lines of stdin for the event loop, read by a daemon thread.

    A thread (not ``connect_read_pipe``) because stdin may be a regular file,
    which the loop cannot watch; a daemon one so that a blocked read never keeps
    the process alive after Ctrl-C.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdin
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            try:
                for line in iter(self._stream.readline, ""):
                    loop.call_soon_threadsafe(self._lines.put_nowait, line)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(self._lines.put_nowait, None)

        threading.Thread(target=read, name="stdin-lines", daemon=True).start()

    async def next(self) -> str | None:
        """The next line without its newline, or ``None`` at the end of input."""
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)  # stay at the end
            return None
        return line.rstrip("\r\n")
