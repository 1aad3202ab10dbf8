"""Moving a data dir written by earlier versions (qdrant-client local mode) into Qdrant Edge.

Earlier versions kept vectors with qdrant-client's local mode under
``<data_dir>/qdrant``. On the first start of this version that directory is
read through local mode (which opens it as it always did), every collection is
copied into the Edge engine in batches, and the directory is renamed to
``qdrant.migrated`` so the copy happens once. A migration cut short is redone
from the start on the next start: the old directory is renamed only at the end,
and a collection copied half-way is dropped and copied again.
"""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import suppress
from pathlib import Path

from daveloper.errors import ConfigError, NotFound
from daveloper.vectors.model import CollectionSpec, PointData, PointId, VectorEngine

__all__ = ["MIGRATED_SUFFIX", "migrate_local_mode"]

log = logging.getLogger(__name__)

#: Appended to the old directory's name once its points are in the new engine.
MIGRATED_SUFFIX = ".migrated"
#: Points read from local mode per page (the target batches its own writes).
PAGE_SIZE = 512
#: Log a progress line every this many points.
PROGRESS_EVERY = 10_000


def _needs_migration(path: Path) -> bool:
    """Whether ``path`` holds a local-mode store; ``ConfigError`` if a running process holds it."""
    if not path.is_dir():
        return False
    lock_file = path / ".lock"
    if not lock_file.exists():
        return True
    with open(lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"Qdrant local storage {path} is in use by another process (an earlier Daveloper?); "
                "stop it so its vectors can be migrated"
            ) from None
        fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def _set_aside(old: Path) -> Path:
    aside = old.with_name(old.name + MIGRATED_SUFFIX)
    if aside.exists():  # an earlier migration's leftovers: keep both
        aside = old.with_name(f"{old.name}{MIGRATED_SUFFIX}.{int(time.time())}")
    old.rename(aside)
    return aside


def _point_id(text: str) -> PointId:
    return int(text) if text.isascii() and text.isdigit() else text


async def migrate_local_mode(old: Path, target: VectorEngine) -> int:
    """Copy every collection of the local-mode store ``old`` into ``target``, then rename ``old`` aside.

    Returns the number of points copied (0 when there is no old store).
    Runs at start-up, before anything is served: local mode reads its files on
    the calling thread.
    """
    if not _needs_migration(old):
        return 0
    # Imported here: only a data dir from an earlier version needs qdrant-client.
    from qdrant_client import AsyncQdrantClient

    from daveloper.vectors.remote import RemoteEngine

    started = time.monotonic()
    log.info("migrating vectors from Qdrant local mode at %s to Qdrant Edge", old)
    source = RemoteEngine(AsyncQdrantClient(path=str(old)))
    total = 0
    try:
        for name in await source.list_collections():
            info = await source.describe(name)
            with suppress(NotFound):
                await target.drop_collection(name)  # a migration that stopped half-way
            await target.create_collection(name, CollectionSpec(dense=info.dense, sparse=info.sparse,
                                                                indexes=info.indexes))
            copied, offset, logged = 0, None, 0
            while True:
                records, offset = await source.scroll(name, limit=PAGE_SIZE, offset=offset, with_vectors=True)
                await target.upsert(name, [PointData(_point_id(r.id), r.vectors, r.payload) for r in records])
                copied += len(records)
                if copied - logged >= PROGRESS_EVERY:
                    log.info("migrating %s: %d of %d points", name, copied, info.points)
                    logged = copied
                if offset is None:
                    break
            log.info("migrated collection %s: %d points", name, copied)
            total += copied
    finally:
        await source.close()
    aside = _set_aside(old)
    log.info("migrated %d points in %.1f s; the old store is kept at %s (delete it when satisfied)",
             total, time.monotonic() - started, aside)
    return total
