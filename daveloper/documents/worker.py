"""The document worker: parse → chunk → sparse-embed documents in a process of its own.

A worker is started by :class:`~daveloper.documents.pool.DocumentPool` as
``python -m daveloper.documents.worker FD MEMORY_BYTES`` with one end of a
socket pair as file descriptor ``FD``, and serves one document at a
time until that socket closes. It never touches Redis, Qdrant or the event
loop: bytes come in, chunk texts and BM25 vectors go back.

Wire format, both directions: frames of a 4-byte big-endian length and a
body. A job is two frames, a pickled :class:`Job` then the document's raw
bytes (not pickled: a 30 MB upload is not copied into a pickle). The answer
is a stream of pickled tuples, each led by its kind (and a worker that has
started says ``("ready",)`` once, before its first job):

* ``("stage", stage, done, total)`` — progress (``parsing``, ``chunking``, ``embedding``);
* ``("outline", media_type, title, language, chunk_count)`` — once, after chunking;
* ``("chunks", [row, ...])`` — a batch of :data:`BATCH` chunks, each row
  ``(text, token_count, heading_path, page, start_line, end_line, indices, values)``
  with the sparse vector as ``array('I')`` / ``array('d')`` bytes, which pickle
  and unpickle as one object each rather than hundreds of ints and floats;
* then exactly one of ``("done", recycle)``, ``("refused", message, reason,
  violations)`` (an :class:`~daveloper.errors.InvalidArgument` of the parser),
  ``("over_budget", limit, message)`` or ``("error", text)``.

Budgets: the worker's address space is capped with ``RLIMIT_AS`` when it
starts (a ``MemoryError`` is reported as over budget, then the worker exits so
its heap is returned to the system); the chunk cap is checked before chunking
from a lower bound on the chunk count, and again after. CPU time is enforced
from outside by the pool, which kills a worker over its budget: a worker stuck
inside C code (a regular expression, lxml) could not interrupt itself.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daveloper.documents.chunking import MAX_TOKENS, chunk
from daveloper.documents.embeddings.bm25 import BM25Embedder
from daveloper.documents.tokens import count_tokens
from daveloper.errors import InvalidArgument

__all__ = ["BATCH", "HEADER", "WARM_UP", "Job", "Limit", "main", "read_frame", "serve", "warm_up", "write_frame"]

#: Imported by the parsers on first use; a worker imports them as it starts instead, so that
#: its first HTML, PDF or DOCX is not slower than the rest.
PARSER_LIBRARIES = ("trafilatura", "pypdf", "docx")
#: Chunks per ``chunks`` frame (also the granularity of the parent's store writes).
BATCH = 128
#: Length prefix of every frame.
HEADER = struct.Struct("!I")
#: A ``stage`` frame at most this often while embedding (seconds).
PROGRESS_INTERVAL = 0.2
#: A worker still holding this share of its memory budget after a job exits
#: (Python keeps freed memory in its arenas; a fresh worker starts small).
RECYCLE_SHARE = 0.5


class Limit:
    """What a document ran out of (``ErrorInfo.metadata["limit"]`` of PARSE_BUDGET_EXCEEDED)."""

    CPU = "cpu_seconds"
    MEMORY = "memory_bytes"
    CHUNKS = "chunks"
    WORKER = "worker"


@dataclass(frozen=True, slots=True)
class Job:
    """What to do with the next document's bytes."""

    file_name: str
    declared_type: str
    max_chunks: int


def write_frame(sock: socket.socket, body: bytes | memoryview) -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(HEADER.pack(len(body)))
    sock.sendall(body)


def read_frame(sock: socket.socket) -> bytes | None:
    """Receive one frame from a blocking socket; ``None`` when the peer closed it."""
    head = _read_exactly(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exactly(sock, size)
    if body is None:
        return None
    return body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            return None
        got += count
    return bytes(buffer)


def serve(sock: socket.socket, memory_bytes: int) -> None:
    """The worker's main loop: one job at a time until the pool closes the socket."""
    # Ctrl-C reaches the whole process group; the server decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    embedder = BM25Embedder()
    warm_up(embedder)

    def send(*message: Any) -> None:
        write_frame(sock, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    with sock:
        send("ready")
        while True:
            try:
                if (header := read_frame(sock)) is None or (data := read_frame(sock)) is None:
                    return
                run(pickle.loads(header), data, send, embedder)
            except MemoryError:
                send("over_budget", Limit.MEMORY,
                     f"processing the document needed more than {memory_bytes >> 20} MiB of memory")
                return  # a fresh worker replaces this one
            except InvalidArgument as exc:
                send("refused", exc.message, exc.reason, exc.violations)
            except _OverBudget as exc:
                send("over_budget", exc.limit, str(exc))
            except Exception as exc:  # reported to the parent, which logs it; the worker stays usable
                send("error", f"{type(exc).__name__}: {exc}")
            else:
                recycle = bool(memory_bytes) and resident_bytes() > memory_bytes * RECYCLE_SHARE
                send("done", recycle)
                if recycle:
                    return


class _OverBudget(Exception):
    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def run(job: Job, data: bytes, send: Callable[..., None], embedder: BM25Embedder) -> None:
    """Parse, chunk and embed one document, sending its frames (see the module docstring)."""
    # Here, not at the top: the server imports this module for the pool's protocol, and the parsers
    # (markdown-it, lxml) would be ~10 MiB of its memory it never uses.
    from daveloper.documents.parsing import parse

    parsed = parse(data, file_name=job.file_name, declared_type=job.declared_type)
    del data
    send("stage", "parsing", 1, 1)
    # Every chunk holds at most MAX_TOKENS and every token lands in one: a cheap lower bound
    # that refuses a hostile document (30 MB of one line) before the expensive chunking.
    block_tokens = [count_tokens(block.text) for block in parsed.blocks]
    least = math.ceil(sum(block_tokens) / MAX_TOKENS)
    if least > job.max_chunks:
        raise _OverBudget(Limit.CHUNKS, f"the document makes at least {least} chunks; "
                                        f"the limit is {job.max_chunks}")
    drafts = chunk(parsed, block_tokens=block_tokens)
    if len(drafts) > job.max_chunks:
        raise _OverBudget(Limit.CHUNKS, f"the document makes {len(drafts)} chunks; the limit is {job.max_chunks}")
    send("outline", parsed.media_type, parsed.title, parsed.language, len(drafts))
    send("stage", "chunking", len(drafts), len(drafts))
    reported = time.monotonic()
    for start in range(0, len(drafts), BATCH):
        batch = drafts[start:start + BATCH]
        rows = [(draft.text, draft.token_count, draft.heading_path, draft.page, draft.start_line, draft.end_line,
                 indices, values)
                for draft, (indices, values) in zip(batch, embedder.document_rows([d.text for d in batch]),
                                                    strict=True)]
        send("chunks", rows)
        done = min(start + BATCH, len(drafts))
        if time.monotonic() - reported >= PROGRESS_INTERVAL or done == len(drafts):
            reported = time.monotonic()
            send("stage", "embedding", done, len(drafts))


#: The document :func:`warm_up` runs: Markdown with a heading, code and a link.
WARM_UP = b"# Warm-up\n\nA paragraph with `code`, a [link](https://example.com) and snake_case words.\n"


def warm_up(embedder: BM25Embedder) -> None:
    """Run :data:`WARM_UP` through :func:`run`, sending nothing, before the worker says it is ready.

    Otherwise a fresh worker's first document pays the pipeline's lazy imports (the parsers,
    numpy for the embedding rows) and first-use costs: 0.23 s of CPU against 0.001 s for the
    same small document next, counted against the first document's CPU budget.
    """
    run(Job(file_name="warm-up.md", declared_type="", max_chunks=8), WARM_UP, lambda *_: None, embedder)


def resident_bytes() -> int:
    """This process's resident memory now.

    Not ``ru_maxrss``: Linux carries a process's peak across ``exec``, so a worker
    started from a large server would inherit the server's peak as its own.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, from ``/proc``; ``None`` where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def main(argv: list[str]) -> None:
    """``python -m daveloper.documents.worker FD MEMORY_BYTES``: serve the pool on socket ``FD``."""
    fd, memory_bytes = int(argv[0]), int(argv[1])
    for library in PARSER_LIBRARIES:
        with contextlib.suppress(ImportError):
            importlib.import_module(library)
    serve(socket.socket(fileno=fd), memory_bytes)


if __name__ == "__main__":
    main(sys.argv[1:])
