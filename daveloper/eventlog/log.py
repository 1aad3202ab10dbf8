"""The event log: append with an assigned seq, replay from a cursor, tail live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis

from daveloper.errors import Cancelled, CursorExpired, FailedPrecondition, InvalidArgument
from daveloper.eventlog._store import ScopeKeys, redis_call, socket_timeout
from daveloper.eventlog.control import ControlChannel
from daveloper.metrics import METRICS, Metrics

__all__ = ["Entry", "EventLog"]

T = TypeVar("T")

#: Entries fetched per round trip when replaying.
_BATCH = 256

#: A stream entry as redis-py returns it: (b"<seq>-0", {b"p": payload[, b"f": b"1"]}).
_RawEntry = tuple[bytes, dict[bytes, bytes]]

# KEYS: stream, meta hash. ARGV: payload, final ("1"/"0"), retention, TTL seconds.
# Returns the new seq, or minus the final seq if the scope is already finished.
# One script, so that seq order is stream order even with writers in many
# processes: the stream id *is* the seq, and XADD refuses ids out of order.
_APPEND = """
local final = redis.call('HGET', KEYS[2], 'final')
if final then
  return -tonumber(final)
end
local seq = redis.call('HINCRBY', KEYS[2], 'last', 1)
if ARGV[2] == '1' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'p', ARGV[1], 'f', '1')
  redis.call('HSET', KEYS[2], 'final', seq)
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'p', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return seq
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One event of a scope's log; ``final`` marks the last event the scope will ever have."""

    seq: int
    payload: bytes
    final: bool = False


class EventLog:
    """Durable, per-scope event logs in Redis Streams, with a cancel channel for their owners.

    ``retention`` is how many events a scope keeps at least (trimming is
    approximate, so a few more may stay); ``ttl_seconds`` how long a scope
    lives after its last append; ``block_ms`` how long one live read waits
    before it re-checks that the scope still exists. ``block_ms`` must stay
    below the client's ``socket_timeout``, which redis-py applies to blocking
    reads too.

    Connections: a following reader holds one connection of ``redis``'s pool
    while it waits (``XREAD BLOCK``), so the pool must allow one per concurrent
    reader plus the commands around them; cancelling the reader's task closes
    that connection and returns it to the pool at once. Between entries a
    reader holds none. Cancel watches share one pub/sub connection; close it
    with :meth:`aclose` (or ``async with``).

    ``metrics`` counts reads (from the start or resumed), expired cursors, and
    cancel latency: from the owner hearing a cancel to its work's task stopped.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retention: int,
        ttl_seconds: int,
        block_ms: int = 2_000,
        prefix: str = "dv:",
        metrics: Metrics | None = None,
    ) -> None:
        if retention < 1 or ttl_seconds < 1 or block_ms < 1:
            raise ValueError("retention, ttl_seconds and block_ms must be positive")
        pool = redis.connection_pool
        if pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the event log needs a client without decode_responses (payloads are bytes)")
        timeout = socket_timeout(pool)
        if timeout is not None and block_ms >= timeout * 1000:
            raise ValueError(f"block_ms ({block_ms}) must be below the client's socket_timeout ({timeout} s)")
        self._redis = redis
        self._retention = retention
        self._ttl_seconds = ttl_seconds
        self._block_ms = block_ms
        self._prefix = prefix
        metrics = metrics or METRICS
        self._starts, self._resumes = metrics.eventlog_reads.labels("start"), metrics.eventlog_reads.labels("resume")
        self._expired_cursors = metrics.eventlog_expired
        self._cancel_seconds = metrics.cancel_seconds
        self._append = redis.register_script(_APPEND)
        self._control = ControlChannel(redis, prefix=prefix, ttl_seconds=ttl_seconds)

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the shared pub/sub connection and stop its dispatcher task."""
        await self._control.aclose()

    async def append(self, scope: str, payload: bytes, *, final: bool = False) -> int:
        """Append ``payload`` to ``scope``'s log and return its seq (1, 2, 3, ...).

        ``final=True`` finishes the scope: readers stop after this entry and
        later appends raise :class:`~daveloper.errors.FailedPrecondition`
        (reason ``EVENT_LOG_FINISHED``). A connection failure raises
        :class:`~daveloper.errors.Unavailable`; if it struck after the server
        ran the append, redis-py's retry may append the payload a second
        time (under the next seq), so the sequence stays gap-free but payloads
        are at-least-once.
        """
        keys = self._keys(scope)
        seq = int(await redis_call(self._append(
            keys=[keys.stream, keys.meta],
            args=[payload, "1" if final else "0", self._retention, self._ttl_seconds],
        )))
        if seq < 0:
            raise FailedPrecondition(
                f"event log {scope!r} is finished (final event {-seq})",
                reason="EVENT_LOG_FINISHED",
                metadata={"scope": scope, "final_seq": str(-seq)},
            )
        return seq

    async def last_seq(self, scope: str) -> int:
        """The seq of the scope's last event; 0 if it has none (or was deleted or expired)."""
        return (await self._state(self._keys(scope)))[0]

    async def finished(self, scope: str) -> bool:
        """Whether the scope's final event has been written."""
        return (await self._state(self._keys(scope)))[1] is not None

    async def delete(self, scope: str) -> bool:
        """Remove the scope's log, its state and any cancel request; True if anything existed.

        Following readers that have seen events raise ``CursorExpired`` within
        ``block_ms``; the scope's owner is not told (cancel it first if it runs).
        Scope names should not be reused afterwards: the seq restarts at 1.
        """
        keys = self._keys(scope)
        return bool(await redis_call(self._redis.delete(keys.stream, keys.meta, keys.cancel)))

    async def read(self, scope: str, after_seq: int = 0, *, follow: bool = True) -> AsyncIterator[Entry]:
        """Yield every entry of ``scope`` with seq > ``after_seq``, in order, each once.

        Replays what is stored, then, if ``follow``, waits for new entries
        until the final entry has been yielded (or the caller stops iterating or
        is cancelled); replay and live tail are one cursor, so nothing is
        skipped or repeated between them. Without ``follow`` it stops at the
        last entry that existed when the read began.

        Errors (raised by the first ``__anext__``, or later during a live read):

        * :class:`~daveloper.errors.CursorExpired` (reason ``CURSOR_EXPIRED``)
          when entries after ``after_seq`` are no longer retained: trimmed
          (also when trimming overtakes a slow reader), or the scope was deleted
          or expired (then there is no log, and ``after_seq > 0``). Metadata:
          ``scope``, ``after_seq``, ``first_seq``; resuming with
          ``after_seq = first_seq - 1`` yields everything still available.
        * :class:`~daveloper.errors.InvalidArgument` when ``after_seq`` is
          negative, or ahead of the last seq of an existing log. Seqs are
          assigned in order, so this log never handed out such a cursor: it is
          made up or from an earlier log of the same name, and waiting would
          silently skip the first events. ``after_seq=0`` on a scope without
          events is fine and waits for them.

        Use ``contextlib.aclosing`` to stop early without leaving the generator open.
        """
        keys = self._keys(scope)
        if after_seq < 0:
            raise InvalidArgument.field("after_seq", "must not be negative")
        (self._resumes if after_seq else self._starts).inc()
        last, final = await self._state(keys)
        if last == 0 and after_seq > 0:
            raise self._expired(scope, after_seq, 1, "was deleted or expired")
        if after_seq > last:
            problem = f"is ahead of the last event ({last})"
            raise InvalidArgument(
                f"after_seq {after_seq} {problem} of {scope!r}",
                violations=[("after_seq", problem)],
                metadata={"scope": scope, "after_seq": str(after_seq), "last_seq": str(last)},
            )
        if final is not None and after_seq >= final:
            return
        cursor = after_seq
        while True:
            if follow:
                batch = _stream_entries(await redis_call(self._redis.xread(
                    {keys.stream: f"{cursor}-0"}, count=_BATCH, block=self._block_ms
                )))
            elif cursor < last:
                batch = cast(list[_RawEntry], await redis_call(self._redis.xrange(
                    keys.stream, f"{cursor + 1}-0", f"{last}-0", count=_BATCH
                )))
            else:
                return
            if not batch:
                current = (await self._state(keys))[0]
                if follow and current >= cursor:
                    continue  # quiet scope: keep waiting
                # Entries we were due were never returned: the log went away.
                raise self._expired(scope, cursor, current + 1, "was deleted or expired")
            for entry_id, fields in batch:
                seq = int(entry_id.split(b"-", 1)[0])
                if seq != cursor + 1:
                    raise self._expired(scope, cursor, seq, "no longer holds the events after the cursor")
                cursor = seq
                entry = Entry(seq, bytes(fields[b"p"]), b"f" in fields)
                yield entry
                if entry.final:
                    return

    async def request_cancel(self, scope: str) -> bool:
        """Ask the owner of ``scope``'s work, on whichever instance, to stop.

        Sets a durable cancel flag (kept ``ttl_seconds``) and publishes a notice;
        returns False, doing nothing, if the scope is already finished. A
        request made before the owner starts watching is not lost.
        """
        return await self._control.request_cancel(scope)

    def cancellation(self, scope: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """For the owner of ``scope``'s work: yields an ``asyncio.Event`` set when a cancel is requested.

        ``async with log.cancellation(scope) as cancelled:`` is entered once the
        subscription is confirmed and earlier requests were checked (the event
        is then already set). Raises :class:`~daveloper.errors.Unavailable`
        when Redis cannot confirm the subscription in time.
        """
        return self._control.cancellation(scope)

    async def run_cancellable(self, scope: str, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` until it finishes or a cancel of ``scope`` arrives, from any instance.

        On a cancel the work's task is cancelled (closing whatever it has open
        upstream) and awaited, then :class:`~daveloper.errors.Cancelled` is
        raised. Cancelling the caller cancels the work too.
        """
        async with self.cancellation(scope) as cancelled:
            task = asyncio.create_task(work)
            stop = asyncio.create_task(cancelled.wait())
            try:
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                told = time.perf_counter()
                if not task.done():
                    task.cancel()
                await asyncio.wait({task, stop})
        if task.cancelled():
            self._cancel_seconds.labels(scope.partition(":")[0]).observe(time.perf_counter() - told)
            raise Cancelled("cancelled on request", metadata={"scope": scope})
        return task.result()

    def _keys(self, scope: str) -> ScopeKeys:
        return ScopeKeys.of(self._prefix, scope)

    async def _state(self, keys: ScopeKeys) -> tuple[int, int | None]:
        """(last assigned seq, final seq or None)."""
        last, final = await redis_call(self._redis.hmget(keys.meta, ["last", "final"]))
        return int(last or 0), None if final is None else int(final)

    def _expired(self, scope: str, after_seq: int, first_seq: int, what: str) -> CursorExpired:
        self._expired_cursors.inc()
        return CursorExpired(
            f"event log {scope!r} {what} (after_seq {after_seq}, first available seq {first_seq})",
            metadata={"scope": scope, "after_seq": str(after_seq), "first_seq": str(first_seq)},
        )


def _stream_entries(reply: Any) -> list[_RawEntry]:
    """The entries of a one-stream ``XREAD`` reply, as redis-py shapes it for RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        if entries and isinstance(entries[0], list):  # RESP3: wrapped in one more list
            (entries,) = entries
        return list(entries)
    ((_, entries),) = reply
    return list(entries)
