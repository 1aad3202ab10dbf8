"""Qdrant Edge: Qdrant's own storage and search engine, one shard per collection, in a process of its own.

Layout: ``<root>/<collection>/`` is one ``EdgeShard`` (segments, WAL and the
engine's ``edge_config.json``); ``<root>/.lock`` is held with ``flock`` for the
engine's lifetime, so a second process on the same data dir is refused with a
:class:`~daveloper.errors.ConfigError` instead of a WAL error.

Edge calls are synchronous and hold the GIL for their whole duration, whatever
thread runs them: a shard load takes ~1 s at 100k points, an ``optimize()`` of
100k unindexed 384-d points 3.5 s. So the shards live in an engine process
(:mod:`daveloper.vectors.edge_host`) and this class is its client:

* the event loop writes each call to a socket pair and a reader task hands
  the answers back in order, so the loop never waits for Edge, calls reach the
  shards one at a time, in order, and concurrent calls are pipelined (no
  thread: a worker thread waited up to two GIL switch intervals, ~10 ms, per
  call while the loop was busy);
* upserts go in batches of :data:`BATCH_SIZE` points (fewer with wide dense
  vectors), so a search waits behind at most one batch;
* **maintenance**: segments are optimized (dense vectors quantized to int8, small
  segments merged, deleted points reclaimed) in steps, after every
  :data:`MAINTAIN_EVERY` points written to a collection and once the engine has
  been idle for :data:`IDLE_SECONDS`. A step takes 0.5 to 2 s in the engine
  process; a search arriving meanwhile waits for it, the event loop does not.
  See docs/operations.md, "Sizing the embedded defaults".

If the engine process dies, the call in flight fails ``UNAVAILABLE`` and the
next call starts a new one (shards reopen from their WAL). Everything is
flushed on :meth:`EdgeEngine.close`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from daveloper import errors
from daveloper.errors import ConfigError, DaveloperError, Internal, InvalidArgument, Unavailable
from daveloper.vectors.edge_host import NAME, RRF_K
from daveloper.vectors.edge_link import EngineGone, EngineProcess
from daveloper.vectors.model import (
    CollectionInfo,
    CollectionSpec,
    Filter,
    IndexKind,
    PointData,
    PointId,
    PointQuery,
    Record,
    ShardStats,
    Sparse,
)

__all__ = ["BATCH_SIZE", "IDLE_SECONDS", "MAINTAIN_EVERY", "RRF_K", "EdgeEngine"]

log = logging.getLogger(__name__)

#: Points per upsert call: small enough that a search waits behind one for only a few milliseconds.
BATCH_SIZE = 256
#: Dense values per upsert call: points with large dense vectors go in smaller batches
#: (measured here: 256 points of 384 dimensions take ~15 ms with their conversion, 128 about half).
DENSE_VALUES_PER_BATCH = 48 * 1024
#: Points written to a collection after which its segments are optimized before the next batch: bounds
#: the unoptimized tail. A step takes ~0.5 s for 16k points of 384 dimensions, up to ~2 s when it also
#: merges segments (in the engine process; measured on this 2-core machine under load).
MAINTAIN_EVERY = 16_384
#: Seconds without calls after which collections written since their last maintenance are optimized.
IDLE_SECONDS = 1.0
_NAME = re.compile(NAME)
# Engine messages that mean the caller sent something that does not fit the collection.
_BAD_INPUT = ("dimension error", "Not existing vector name", "Wrong input", "Bad input", "Bad request")


def _point_id(point_id: PointId) -> PointId:
    # Edge takes UUIDs in any spelling; qdrant-client normalises them. Do the same, so ids read back alike.
    return point_id if isinstance(point_id, int) else str(uuid.UUID(point_id))


def _normalised(point: PointData) -> PointData:
    # Dense vectors travel as one array of doubles: pickled as a byte string, not as hundreds of floats.
    vectors = {name: v if isinstance(v, Sparse | array) else array("d", v) for name, v in point.vectors.items()}
    return PointData(_point_id(point.id), vectors, point.payload)


class EdgeEngine:
    """A :class:`~daveloper.vectors.VectorEngine` on Qdrant Edge shards under ``root`` (see the module docstring).

    Build it with :meth:`open`; :meth:`close` it once.
    """

    kind = "qdrant-edge"

    def __init__(self, root: Path, lock: IO[str], *, batch_size: int = BATCH_SIZE,
                 maintain_every: int = MAINTAIN_EVERY, idle_seconds: float = IDLE_SECONDS) -> None:
        self.root = root
        self._lock = lock
        self._batch_size = batch_size
        self._maintain_every = maintain_every
        self._idle_seconds = idle_seconds
        self._process: EngineProcess | None = None
        self._starting = asyncio.Lock()  # one engine process at a time, however many calls find none
        #: Points written (or deleted) per collection since its last maintenance.
        self._pending: Counter[str] = Counter()
        self._last_call = time.monotonic()
        self._maintaining = False
        self._maintainer: asyncio.Task[None] | None = None
        self._written = asyncio.Event()
        self._closed = False

    @classmethod
    def open(cls, root: Path, **options: Any) -> EdgeEngine:
        """Take ``root`` for this process (``ConfigError`` if another holds it); ``options`` go to ``__init__``."""
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".lock", "a")  # noqa: SIM115 (held for the engine's lifetime, closed in close())
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"Qdrant Edge storage {root} is in use by another process; give each Daveloper process its own "
                "data dir, or share a Qdrant server with DAVELOPER_QDRANT_URL"
            ) from None
        return cls(root, lock, **options)

    @property
    def pid(self) -> int | None:
        """The engine process's id, once one runs (for operators and tests)."""
        process = self._process
        return process.pid if process is not None else None

    async def _roundtrip(self, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send one call to the engine process (starting one if needed) and return its answer."""
        process = self._process
        if process is None:
            async with self._starting:
                if (process := self._process) is None:
                    process = self._process = await EngineProcess.start(self.root)
        try:
            answer: tuple[Any, ...] = await process.call(method, args)
        except EngineGone as exc:
            # This call fails; the next one starts a new process (the shards reopen from their WAL).
            if self._process is process:
                self._process = None
            await asyncio.shield(process.stop())
            raise Unavailable(f"the Qdrant Edge process exited (code {process.process.returncode})",
                              retry_after=1.0) from exc
        return answer

    async def _call(self, what: str, method: str, *args: Any, activity: bool = True) -> Any:
        """Run ``method`` in the engine process; ``activity=False`` (maintenance, probes) does not defer maintenance."""
        if self._closed:
            raise Unavailable(f"{what}: the vector engine is closed", retry_after=1.0)
        if activity:
            self._last_call = time.monotonic()
        try:
            answer = await self._roundtrip(method, args)
        finally:
            if activity:
                self._last_call = time.monotonic()
        match answer:
            case ("ok", value):
                return value
            case ("error", name, message, reason):
                kind = getattr(errors, name, None)
                if isinstance(kind, type) and issubclass(kind, DaveloperError):
                    raise kind(message, reason=reason)
                raise Internal(f"{what}: {message}")
            case ("engine", message):
                if any(marker in message for marker in _BAD_INPUT):
                    raise InvalidArgument(f"{what}: {message}")
                if "not initialized" in message:
                    raise Unavailable(f"{what}: {message}", retry_after=1.0)
                raise Internal(f"{what}: Qdrant Edge failed: {message}")
            case ("raise", exc):
                raise exc
        raise Internal(f"{what}: unexpected answer from the Qdrant Edge process")

    def _checked(self, collection: str) -> str:
        if not _NAME.fullmatch(collection):
            raise InvalidArgument(f"unusable collection name {collection!r}")
        return collection

    def _wrote(self, collection: str, points: int) -> None:
        """Count writes towards the next maintenance, and make sure the idle maintainer runs."""
        self._pending[collection] += points
        if self._maintainer is None and not self._closed:
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain_when_idle(),
                                                                      name="qdrant-edge maintenance")
        self._written.set()

    async def _maintain_when_idle(self) -> None:
        """Optimize the collections written since their last maintenance, once no call came for a while."""
        while True:
            await self._written.wait()
            idle = time.monotonic() - self._last_call
            if idle < self._idle_seconds:
                await asyncio.sleep(self._idle_seconds - idle)
                continue
            self._written.clear()
            for collection in [c for c, n in self._pending.items() if n > 0]:
                try:
                    await self.maintain(collection)
                except Exception:  # e.g. dropped meanwhile: the loop must outlive one failed step
                    log.exception("maintenance of Qdrant Edge collection %s failed", collection)
                if time.monotonic() - self._last_call < self._idle_seconds:
                    self._written.set()  # calls came meanwhile: wait for the next quiet moment
                    break

    async def maintain(self, collection: str) -> ShardStats:
        """Optimize one collection now, in the engine process (the event loop keeps running), and report its layout.

        Quantizes dense vectors of segments past the indexing threshold, merges
        small segments and rewrites ones with many deleted points.
        """
        self._pending.pop(collection, None)
        self._maintaining = True
        started = time.perf_counter()
        try:
            stats: ShardStats = await self._call(f"optimizing {collection!r}", "maintain", self._checked(collection),
                                                 activity=False)
        finally:
            self._maintaining = False
        log.debug("optimized Qdrant Edge collection %s in %.2f s: %s", collection, time.perf_counter() - started,
                  stats)
        return stats

    async def stats(self, collection: str) -> ShardStats:
        """Segments, live points and indexed vectors of one collection."""
        return await self._call(f"collection {collection!r}", "stats",  # type: ignore[no-any-return]
                                self._checked(collection), activity=False)

    async def list_collections(self) -> list[str]:
        return await self._call("listing collections", "list_collections")  # type: ignore[no-any-return]

    async def describe(self, collection: str) -> CollectionInfo:
        return await self._call(f"collection {collection!r}", "describe", self._checked(collection))  # type: ignore[no-any-return]

    async def create_collection(self, collection: str, spec: CollectionSpec) -> None:
        await self._call(f"creating collection {collection!r}", "create_collection", self._checked(collection), spec)

    async def create_index(self, collection: str, field: str, kind: IndexKind) -> None:
        await self._call(f"indexing {field} of {collection!r}", "create_index", self._checked(collection), field, kind)

    async def drop_collection(self, collection: str) -> bool:
        self._pending.pop(collection, None)
        return await self._call(f"dropping collection {collection!r}", "drop_collection",  # type: ignore[no-any-return]
                                self._checked(collection))

    async def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        self._checked(collection)
        widest = max((len(v) for p in points[:1] for v in p.vectors.values() if not isinstance(v, Sparse)),
                     default=0)
        size = max(16, min(self._batch_size, DENSE_VALUES_PER_BATCH // widest)) if widest else self._batch_size
        for start in range(0, len(points), size):
            part = [_normalised(p) for p in points[start:start + size]]
            await self._call(f"storing points in {collection!r}", "upsert", collection, part)
            self._wrote(collection, len(part))
            if self._pending[collection] >= self._maintain_every:
                await self.maintain(collection)  # a bulk load never leaves more than this unoptimized

    async def delete_points(self, collection: str, ids: Sequence[PointId]) -> None:
        await self._call(f"deleting points of {collection!r}", "delete_points", self._checked(collection),
                         [_point_id(i) for i in ids])
        self._wrote(collection, len(ids))

    async def delete_where(self, collection: str, where: Filter) -> None:
        await self._call(f"deleting points of {collection!r}", "delete_where", self._checked(collection), where)
        self._wrote(collection, 1)  # how many is unknown: enough to look at it when idle

    async def count(self, collection: str, where: Filter = ()) -> int:
        return await self._call(f"counting points of {collection!r}", "count",  # type: ignore[no-any-return]
                                self._checked(collection), where)

    async def scroll(self, collection: str, where: Filter = (), *, limit: int, offset: PointId | None = None,
                     with_vectors: bool = False) -> tuple[list[Record], PointId | None]:
        return await self._call(f"reading points of {collection!r}", "scroll",  # type: ignore[no-any-return]
                                self._checked(collection), where, limit,
                                _point_id(offset) if offset is not None else None, with_vectors)

    async def retrieve(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = False,
                       with_vectors: bool = False) -> list[Record]:
        return await self._call(f"reading points of {collection!r}", "retrieve",  # type: ignore[no-any-return]
                                self._checked(collection), [_point_id(i) for i in ids], with_payload, with_vectors)

    async def query_points(self, collection: str, query: PointQuery) -> list[Record]:
        if not query.nearest:
            raise ValueError("a query needs at least one nearest-neighbour stage")
        return await self._call(f"querying {collection!r}", "query_points",  # type: ignore[no-any-return]
                                self._checked(collection), query)

    async def ping(self) -> None:
        if self._maintaining and self._process is not None and self._process.process.returncode is None:
            return  # busy with a maintenance step on purpose, and alive: not stuck
        # A round trip to the engine process: it answers.
        await self._call("health check", "ping", activity=False)

    async def close(self) -> None:
        """Stop maintenance, flush and close every shard, stop the engine process, release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.wait([self._maintainer])  # its cancellation is not ours: a cancel of close() still raises

        try:
            process, self._process = self._process, None
            if process is not None:
                try:
                    answer = await process.call("close", ())
                    if answer[0] != "ok":
                        log.error("closing Qdrant Edge shards failed: %s", answer[1:])
                except EngineGone:
                    log.exception("the Qdrant Edge process was gone at close")
                finally:
                    await process.stop()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
