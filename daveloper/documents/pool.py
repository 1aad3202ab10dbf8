"""A bounded pool of document worker processes, shared fairly between sessions.

Parsing, chunking and BM25 embedding are CPU-bound pure Python: run on the
event loop (or in a thread, which holds the GIL just the same) a 30 MB upload
stalls every other call for a minute. :class:`DocumentPool` runs them in
worker processes (:mod:`daveloper.documents.worker`) and streams their results
back over a socket read by the event loop, so the loop only ever decodes small
frames.

* **Bounded**: a fixed number of workers, each serving one document at a time.
* **Fair**: a document waits for a worker in its session's queue, and free
  workers go to the waiting sessions in turn (:class:`FairShare`), so one
  session's 40 files do not starve another session's single upload.
* **Budgeted** (:class:`DocumentBudget`): CPU seconds per document (the pool
  reads the worker's CPU time and kills it when over — code stuck in C could not
  stop itself), memory per worker (``RLIMIT_AS``, set by the worker) and chunks
  per document. A document over budget fails ``RESOURCE_EXHAUSTED`` with reason
  ``PARSE_BUDGET_EXCEEDED``; a worker that died or was killed is replaced
  while the others keep serving.

We do not use ``concurrent.futures.ProcessPoolExecutor``: when one of its
workers dies it fails every pending future (``BrokenProcessPool``), which would
turn one hostile document into a failure for every upload in flight, and it
cannot stream progress or kill the one worker that is over its CPU budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

from daveloper.documents import worker as worker_module
from daveloper.documents.fairshare import FairShare
from daveloper.documents.model import ChunkDraft, SparseVector
from daveloper.documents.worker import HEADER, Job, Limit, cpu_seconds
from daveloper.errors import Internal, InvalidArgument, ResourceExhausted

__all__ = ["ChunkBatch", "DocumentBudget", "DocumentPool", "FairShare", "Outline", "Result", "Stage"]

log = logging.getLogger("daveloper.documents.pool")


#: ErrorInfo reason of a document over its :class:`DocumentBudget`.
OVER_BUDGET = "PARSE_BUDGET_EXCEEDED"
#: How long a worker may take to exit once asked, before it is killed.
STOP_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class DocumentBudget:
    """What one document may cost its worker."""

    #: CPU time (user + system) to parse, chunk and embed one document.
    cpu_seconds: float = 30.0
    #: Address space of a worker process (``RLIMIT_AS``); 0 for no limit.
    memory_bytes: int = 1 << 30
    #: Chunks one document may make.
    max_chunks: int = 10_000


@dataclass(frozen=True, slots=True)
class Stage:
    """Progress of a stage: ``parsing``, ``chunking`` or ``embedding``."""

    name: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Outline:
    """What the document turned out to be, once chunked."""

    media_type: str
    title: str
    language: str
    chunk_count: int


@dataclass(frozen=True, slots=True)
class ChunkBatch:
    """Consecutive chunks and their sparse vectors."""

    drafts: list[ChunkDraft]
    vectors: list[SparseVector]


Result = Stage | Outline | ChunkBatch


class _Worker:
    """One worker process and the event loop's end of its socket.

    A worker is a fresh interpreter running ``python -m daveloper.documents.worker``
    with the other end of a socket pair, not a ``multiprocessing`` child: those
    re-run the server's ``__main__`` module in every worker (in Python 3.11 even
    under a fork server), loading the whole application into each one.
    """

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.process = process
        self._reader = reader
        self._writer = writer

    @classmethod
    async def start(cls, memory_bytes: int) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", worker_module.__name__, str(theirs.fileno()), str(memory_bytes),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = cls(process, reader, writer)
        try:
            if await worker.receive() != ("ready",):
                raise RuntimeError("the document worker did not start as expected")
        except BaseException:
            worker.kill()
            await worker.stop()
            raise
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, job: Job, data: bytes) -> None:
        header = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.writelines([HEADER.pack(len(header)), header, HEADER.pack(len(data)), data])
        await self._writer.drain()

    async def receive(self) -> tuple[Any, ...]:
        """The next message; ``IncompleteReadError`` when the worker has gone."""
        (size,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
        message: tuple[Any, ...] = pickle.loads(await self._reader.readexactly(size))
        return message

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def exit_code(self) -> int | None:
        """The exit code of a worker whose socket closed (it is exiting, or has exited)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), STOP_SECONDS)
        return self.process.returncode

    async def stop(self) -> None:
        """Close the socket (the worker then exits), killing the worker if it lingers."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        if await self.exit_code() is None:
            self.kill()
            await self.exit_code()


def _over_budget(limit: str, message: str, budget: DocumentBudget) -> ResourceExhausted:
    values = {Limit.CPU: str(budget.cpu_seconds), Limit.MEMORY: str(budget.memory_bytes),
              Limit.CHUNKS: str(budget.max_chunks)}
    metadata = {"limit": limit} | ({"value": values[limit]} if limit in values else {})
    return ResourceExhausted(message, reason=OVER_BUDGET, metadata=metadata)


class DocumentPool:
    """Runs parse → chunk → sparse embed for documents in worker processes (see the module docstring)."""

    def __init__(self, *, workers: int, budget: DocumentBudget) -> None:
        if workers < 1:
            raise ValueError("a document pool needs at least one worker")
        self.workers = workers
        self.budget = budget
        self._started = False
        self._share: FairShare[_Worker] = FairShare()
        self._all: set[_Worker] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing = asyncio.Event()

    def start(self) -> None:
        """Start the workers in the background (documents wait for the first free one).

        The first document starts them if nobody did: a server that is never sent a
        document never pays for the workers' start (about a second of CPU each).
        """
        if self._started:
            return
        self._started = True
        for _ in range(self.workers):
            self._spawn(self._add(), name="start document worker")

    async def ready(self) -> None:
        """Wait until every worker started so far runs."""
        while self._starting:
            await asyncio.wait(set(self._starting))

    def _spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _add(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                worker = await _Worker.start(self.budget.memory_bytes)
            except Exception:
                # Without workers documents would wait for ever: keep trying, and say so.
                log.exception("could not start a document worker; retrying in %s s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            self._all.add(worker)
            if self._closed:
                await self._retire(worker)
            else:
                self._share.release(worker)
            return

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.stop()

    def _replace(self, worker: _Worker) -> None:
        """Stop ``worker`` and start another in its place, in the background (the pool owns the task)."""
        async def replace() -> None:
            await self._retire(worker)
            await self._add()

        self._spawn(replace(), name="replace document worker")

    async def aclose(self) -> None:
        """Stop every worker; documents still running fail as cancelled by their callers first."""
        self._closed = True
        self._closing.set()
        if self._starting:
            await asyncio.wait(set(self._starting))
        await asyncio.gather(*(self._retire(worker) for worker in list(self._all)))

    async def __aenter__(self) -> DocumentPool:
        self.start()
        await self.ready()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @property
    def waiting(self) -> int:
        """Documents waiting for a worker."""
        return self._share.waiting

    async def process(self, data: bytes, *, session_id: str, file_name: str = "",
                      declared_type: str = "") -> AsyncGenerator[Result, None]:
        """Parse, chunk and embed ``data`` in a worker when ``session_id``'s turn comes.

        Yields :class:`Stage` progress, one :class:`Outline` and the
        :class:`ChunkBatch` es in order. Raises what the parser refuses
        (``InvalidArgument``), ``ResourceExhausted`` (``PARSE_BUDGET_EXCEEDED``)
        or ``Internal``. Close it (``contextlib.aclosing``) when stopping early:
        that stops the worker's job.
        """
        if self._closed:
            raise RuntimeError("the document pool is closed")
        self.start()
        worker = await self._share.acquire(session_id)
        while worker.process.returncode is not None:  # died while idle (the OOM killer?): not this document's fault
            log.warning("document worker %s exited while idle (exit code %s)", worker.pid, worker.process.returncode)
            self._replace(worker)
            worker = await self._share.acquire(session_id)
        job = Job(file_name=file_name, declared_type=declared_type, max_chunks=self.budget.max_chunks)
        inbox: asyncio.Queue[tuple[Any, ...] | BaseException] = asyncio.Queue()
        runner = asyncio.get_running_loop().create_task(self._run(worker, job, data, inbox),
                                                        name=f"document job on worker {worker.pid}")
        del data
        index = 0
        try:
            while True:
                message = await inbox.get()
                if isinstance(message, BaseException):
                    raise message
                kind = message[0]
                if kind == "done":
                    return
                if kind == "stage":
                    yield Stage(*message[1:])
                elif kind == "outline":
                    yield Outline(*message[1:])
                elif kind == "chunks":
                    batch = _batch(message[1], index)
                    index += len(batch.drafts)
                    yield batch
                else:
                    raise self._failure(message)
        finally:
            if not runner.done():
                runner.cancel()
            await asyncio.wait([runner])

    def _failure(self, message: tuple[Any, ...]) -> Exception:
        kind = message[0]
        if kind == "refused":
            _, text, reason, violations = message
            return InvalidArgument(text, violations=violations, reason=reason)
        if kind == "over_budget":
            return _over_budget(message[1], message[2], self.budget)
        log.error("document worker failed: %s", message[1])
        return Internal("the document could not be processed", reason="PARSE_FAILED")

    async def _run(self, worker: _Worker, job: Job, data: bytes,
                   inbox: asyncio.Queue[tuple[Any, ...] | BaseException]) -> None:
        """Send the job, pass the worker's messages on, and give the worker back (or replace it)."""
        keep = False
        killed: list[str] = []
        started = cpu_seconds(worker.pid)
        watchdog = asyncio.get_running_loop().create_task(self._watch(worker, started, killed))
        try:
            await worker.send(job, data)
            del data
            while True:
                message = await worker.receive()
                inbox.put_nowait(message)
                kind = message[0]
                if kind in ("stage", "outline", "chunks"):
                    continue
                # a refusal or an error leaves a usable worker; memory trouble and recycling do not
                keep = kind in ("refused", "error") or (kind == "done" and not message[1]) or (
                    kind == "over_budget" and message[1] == Limit.CHUNKS)
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            exitcode = await worker.exit_code()
            if killed:
                inbox.put_nowait(_over_budget(Limit.CPU, f"processing the document took more than "
                                                         f"{self.budget.cpu_seconds:g} s of CPU", self.budget))
            else:
                log.error("document worker %s died (exit code %s)", worker.pid, exitcode)
                inbox.put_nowait(_over_budget(Limit.WORKER, f"processing the document stopped its worker "
                                                            f"(exit code {exitcode})", self.budget))
        finally:
            watchdog.cancel()
            if keep:
                self._share.release(worker)
            else:  # dead, killed, over budget, or abandoned mid-job (cancelled): start afresh
                worker.kill()
                self._replace(worker)

    async def _watch(self, worker: _Worker, started: float | None, killed: list[str]) -> None:
        """Kill ``worker`` once the job has used more than its CPU budget."""
        budget, begun = self.budget.cpu_seconds, time.monotonic()
        used = 0.0
        while True:
            # One thread cannot use more CPU than wall time: sleep until the budget could be spent.
            await asyncio.sleep(max(budget - used, 0.05))
            now = cpu_seconds(worker.pid)
            used = now - started if now is not None and started is not None else time.monotonic() - begun
            if used > budget:
                killed.append(Limit.CPU)
                log.warning("document over its CPU budget: killing worker %s", worker.pid,
                            extra={"cpu_seconds": round(used, 1)})
                worker.kill()
                return


def _batch(rows: list[tuple[Any, ...]], first: int) -> ChunkBatch:
    drafts: list[ChunkDraft] = []
    vectors: list[SparseVector] = []
    for offset, (text, tokens, path, page, start_line, end_line, indices, values) in enumerate(rows):
        drafts.append(ChunkDraft(index=first + offset, text=text, token_count=tokens, heading_path=path, page=page,
                                 start_line=start_line, end_line=end_line))
        vectors.append(SparseVector(indices=tuple(array("I", indices)), values=tuple(array("d", values))))
    return ChunkBatch(drafts, vectors)

