"""``daveloper ingest PATH...``: upload files (directories walked) with a progress bar each.

Each file is one ``DocumentService/Upload`` stream: a header, then the content
in 64 KiB chunks, far below any sensible server message limit (the default is
4 MiB; the server refuses oversized messages with ``MESSAGE_TOO_LARGE``, which
is reported as the file's failure). A few files go at once (``CONCURRENT_FILES``):
enough to overlap the server's parsing of one with the transfer of the next,
few enough not to spend a session's upload rate in one burst. An upload the
server refuses for now (a rate limit, a saturated server: ``RetryInfo``) is sent
again from its first byte after the delay it asks for (see :mod:`.retry`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from daveloper.client.connection import CommandFailed, Connection, Unreachable, describe_failure, translate_errors
from daveloper.client.retry import MayRetry, Throttle, retrying
from daveloper.client.terminal import ProgressBar, Terminal
from generated.daveloper.v1 import Document, DocumentServiceStub, IngestStage, UploadHeader, UploadRequest

__all__ = ["CHUNK_BYTES", "CONCURRENT_FILES", "collect_files", "ingest"]

CHUNK_BYTES = 64 * 1024
#: Uploads in flight at once.
CONCURRENT_FILES = 4
_MAX_NAME_CHARS = 255
_MAX_SOURCE_URI_CHARS = 2048


@dataclass(frozen=True, slots=True)
class _Found:
    files: list[Path]
    #: Paths that could not be used, with the reason.
    missing: list[tuple[Path, str]]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def collect_files(paths: Iterable[Path], glob: str | None = None) -> _Found:
    """The files to upload: files as given, directories walked (hidden entries skipped, ``glob`` applied)."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            walked = [Path(top) / name for top, _dirs, names in os.walk(path) for name in names]
            files.extend(sorted(f for f in walked if not _hidden(f, path) and f.is_file()
                                and (glob is None or f.relative_to(path).match(glob))))
        else:
            missing.append((path, "no such file or directory" if not path.exists() else "not a regular file"))
    return _Found(files, missing)


async def _chunks(path: Path, bar: ProgressBar, size: int) -> AsyncIterator[UploadRequest]:
    name = path.name[-_MAX_NAME_CHARS:]
    source = str(path) if len(str(path)) <= _MAX_SOURCE_URI_CHARS else ""
    yield UploadRequest(header=UploadHeader(file_name=name, size_bytes=size, source_uri=source))
    file = await asyncio.to_thread(path.open, "rb")
    try:
        sent = 0
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            yield UploadRequest(chunk=chunk)
            sent += len(chunk)
            bar.update("RECEIVING", sent, size)
    finally:
        file.close()


async def _upload_once(connection: Connection, terminal: Terminal, path: Path) -> Document:
    """Upload one file; its stored document, or :class:`CommandFailed` with the reason."""
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except OSError as exc:
        raise CommandFailed(exc.strerror or str(exc)) from exc
    bar = ProgressBar(terminal, path.name)
    stub = DocumentServiceStub(connection.channel)
    failure = ""
    try:
        with translate_errors(connection.options.server, "upload"):
            async for response in stub.upload(_chunks(path, bar, size), timeout=connection.timeout,
                                              metadata=connection.metadata):
                event = response.event
                if event is None:
                    continue
                if event.progress is not None:
                    bar.update(IngestStage(event.progress.stage).name, event.progress.done, event.progress.total)
                elif event.stored is not None:
                    return event.stored
                elif event.failed is not None:
                    failure = describe_failure(event.failed)  # the call then ends with the same status
    except Unreachable:
        raise
    except CommandFailed as exc:
        # The failed event says it better than the status (same failure, with its reason).
        raise CommandFailed(failure or exc.detail, retry_after=exc.retry_after) from exc
    finally:
        bar.close()
    raise CommandFailed(failure or "the server ended the upload without storing the document")


async def _upload(connection: Connection, terminal: Terminal, path: Path, throttle: Throttle) -> Document:
    """Upload one file, resent from the start while the server asks to retry later."""
    def waiting(exc: MayRetry, seconds: float) -> None:
        terminal.note(f"{path}: {exc}; retrying in {seconds:.1f}s", dim=True)

    return await retrying(lambda: _upload_once(connection, terminal, path), connection.retry, waiting,
                          throttle=throttle)


async def ingest(connection: Connection, terminal: Terminal, paths: list[Path], *, glob: str | None = None) -> int:
    """Upload every file; 0 when all were stored, 1 when any failed (each failure is listed)."""
    found = collect_files(paths, glob)
    failures = [(str(path), reason) for path, reason in found.missing]
    if not found.files and not failures:
        raise CommandFailed("no files to upload" + (f" match {glob!r}" if glob else ""))
    stored = 0
    slots = asyncio.Semaphore(CONCURRENT_FILES)
    throttle = Throttle()  # the files share the session's upload rate

    async def one(path: Path) -> None:
        nonlocal stored
        async with slots:
            try:
                document = await _upload(connection, terminal, path, throttle)
            except Unreachable:
                raise  # every other file would fail the same way: the task group stops them all
            except CommandFailed as exc:
                failures.append((str(path), exc.message))
                terminal.note(f"{path}: FAILED: {exc.message}")
                return
        stored += 1
        chunks = "1 chunk" if document.chunk_count == 1 else f"{document.chunk_count} chunks"
        terminal.line(f"{path}: stored {document.id} {document.name!r} ({chunks}, {document.media_type})")

    try:
        async with asyncio.TaskGroup() as group:
            for path in found.files:
                group.create_task(one(path))
    except* Unreachable as group_error:
        raise group_error.exceptions[0] from None
    terminal.note(f"{stored} stored, {len(failures)} failed")
    for name, reason in failures:
        terminal.note(f"  {name}: {reason}")
    return 1 if failures else 0
