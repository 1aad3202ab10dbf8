"""The event loop's link to the Qdrant Edge engine process: start it, write calls, match answers.

Frames are those of ``multiprocessing.connection.Connection`` (a 4-byte
big-endian signed length, or -1 and an 8-byte length, then a pickle), which
the engine process (:mod:`daveloper.vectors.edge_host`) reads and writes on
its end. No thread: a worker thread waiting on a blocking connection needed
the GIL back twice per call, up to two switch intervals (~10 ms) while the
loop was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, cast

__all__ = ["STOP_SECONDS", "Answers", "EngineGone", "EngineProcess"]

log = logging.getLogger("daveloper.vectors.edge")

#: Seconds the engine process gets to flush and exit when closed.
STOP_SECONDS = 30.0
#: Frame headers of ``multiprocessing.connection.Connection``, which the engine process reads and writes.
_SIZE, _LARGE_SIZE = struct.Struct("!i"), struct.Struct("!Q")


class EngineGone(Exception):
    """The engine process closed its end (it exited or was killed)."""


class Answers(asyncio.Protocol):
    """Our end of the socket pair: hands each answer to the oldest call waiting, as soon as its frame is in.

    Answers come back in the order the calls were written (the engine process
    serves one at a time), so they are matched first in, first out; a caller
    cancelled meanwhile has its answer dropped. Parsed in ``data_received``
    rather than by a reader task: the caller resumes one loop iteration sooner.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.gone: BaseException | None = None
        self._buffer = bytearray()
        self._paused: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _SIZE.size:
            (size,) = _SIZE.unpack_from(buffer)
            start = _SIZE.size
            if size == -1:
                if len(buffer) < _SIZE.size + _LARGE_SIZE.size:
                    return
                (size,) = _LARGE_SIZE.unpack_from(buffer, _SIZE.size)
                start += _LARGE_SIZE.size
            if len(buffer) < start + size:
                return
            body = bytes(memoryview(buffer)[start:start + size])
            del buffer[:start + size]
            answer = self.waiting.popleft()
            if not answer.done():
                try:
                    answer.set_result(pickle.loads(body))
                except Exception as exc:  # an answer that does not unpickle: a bug, reported to its caller
                    answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = exc or ConnectionResetError("the Qdrant Edge process closed its socket")
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(EngineGone())
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    def pause_writing(self) -> None:
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    async def drain(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)


class EngineProcess:
    """One engine process and the event loop's end of its socket pair (see :class:`Answers`)."""

    def __init__(self, process: asyncio.subprocess.Process, answers: Answers) -> None:
        self.process = process
        self._answers = answers

    @classmethod
    async def start(cls, root: Path) -> EngineProcess:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daveloper.vectors.edge_host", str(theirs.fileno()), str(root),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _, answers = await asyncio.get_running_loop().create_unix_connection(Answers, sock=ours)
        return cls(process, answers)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, method: str, args: tuple[Any, ...]) -> Any:
        answers = self._answers
        if answers.gone is not None or answers.transport is None:
            raise EngineGone() from answers.gone
        body = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        head = _SIZE.pack(len(body)) if len(body) <= 0x7FFFFFFF else _SIZE.pack(-1) + _LARGE_SIZE.pack(len(body))
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Queued and written with no await in between: answers come back in this order.
        answers.waiting.append(answer)
        answers.transport.writelines((head, body))
        del body
        await answers.drain()
        return await answer

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        """Close our end (the process sees EOF, flushes and exits), killing it if it lingers."""
        if self._answers.transport is not None:
            self._answers.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), STOP_SECONDS)
        except TimeoutError:
            log.error("Qdrant Edge process %d did not exit; killing it", self.pid)
            self.kill()
            await self.process.wait()
