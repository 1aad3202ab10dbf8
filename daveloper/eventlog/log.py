"""The event log: append with an assigned seq, replay from a cursor, tail live."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis

from daveloper.errors import Cancelled, CursorExpired, FailedPrecondition, InvalidArgument, Unavailable
from daveloper.eventlog._append import APPEND
from daveloper.eventlog._store import ScopeKeys, redis_call
from daveloper.eventlog.control import ControlChannel, TaskStopper
from daveloper.eventlog.tail import GONE_NOTICE, RESYNC, UNREACHABLE, Tails
from daveloper.infra.batching import CommandBatcher
from daveloper.infra.pubsub import publish_command
from daveloper.infra.redis import redis_down
from daveloper.metrics import Metrics

__all__ = ["Entry", "EventLog"]

T = TypeVar("T")

#: Entries fetched per round trip when replaying.
_BATCH = 256

#: A stream entry as redis-py returns it: (b"<seq>-0", {b"p": payload[, b"f": b"1"]}).
_RawEntry = tuple[bytes, dict[bytes, bytes]]



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
    lives after its last append.

    Connections: readers hold none while they wait. Each append publishes its
    entries on the scope's tail channel; one pub/sub connection per
    ``EventLog`` subscribes once per followed scope and hands the entries to
    every local reader of that scope (see ``tail.py``), and cancel watches share
    another. Close both with :meth:`aclose` (or ``async with``).

    ``metrics`` counts reads (from the start or resumed), expired cursors, and
    cancel latency: from the owner hearing a cancel to its work's task stopped.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retention: int,
        ttl_seconds: int,
        prefix: str = "dv:",
        metrics: Metrics | None = None,
    ) -> None:
        if retention < 1 or ttl_seconds < 1:
            raise ValueError("retention and ttl_seconds must be positive")
        # get_encoder, not connection_pool: a cluster client has no single pool
        if redis.get_encoder().decode_responses:  # type: ignore[no-untyped-call]
            raise ValueError("the event log needs a client without decode_responses (payloads are bytes)")
        self._redis = redis
        self._retention = retention
        self._ttl_seconds = ttl_seconds
        self._prefix = prefix
        metrics = metrics if metrics is not None else Metrics()
        self._starts, self._resumes = metrics.eventlog_reads.labels("start"), metrics.eventlog_reads.labels("resume")
        self._expired_cursors = metrics.eventlog_expired
        self._cancel_seconds = metrics.cancel_seconds
        #: Appends made close together (many turns streaming at once) share one pipeline; a command queued
        #: here before an append goes out before it, in the same pipeline.
        self.batch = CommandBatcher(redis, observe=metrics.eventlog_append_batch.observe)
        self._append = redis.register_script(APPEND.replace("PUBLISH", publish_command(redis)))
        self._control = ControlChannel(redis, prefix=prefix, ttl_seconds=ttl_seconds)
        self._tails = Tails(redis, quiet_seconds=ttl_seconds)

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the appends in flight, release the shared pub/sub connections and stop their dispatcher tasks."""
        try:
            await self.batch.aclose()
            await self._tails.aclose()
        finally:
            await self._control.aclose()

    async def down(self) -> bool:
        """Whether Redis does not answer at all (a lone server that is down; never a cluster's failover)."""
        return await redis_down(self._redis)

    @property
    def scopes_followed(self) -> int:
        """Scopes this instance currently subscribes to for its live readers (one each, however many readers)."""
        return self._tails.scopes_followed

    async def append(self, scope: str, payload: bytes, *, final: bool = False,
                     writer: tuple[str, int] | None = None) -> int:
        """Append ``payload`` to ``scope``'s log and return its seq (1, 2, 3, ...).

        ``final=True`` finishes the scope: readers stop after this entry and
        later appends raise :class:`~daveloper.errors.FailedPrecondition`
        (reason ``EVENT_LOG_FINISHED``). A connection failure raises
        :class:`~daveloper.errors.Unavailable`; if it struck after the server
        ran the append, redis-py's retry may append the payload a second
        time (under the next seq), so the sequence stays gap-free but payloads
        are at-least-once — unless ``writer`` is given: ``(writer id, batch
        number)``, numbers going 1, 2, 3... per writer id, makes a batch sent
        again (the caller's retry after a lost reply) return the seq it was
        stored under instead of storing it twice.
        """
        return await self.append_many(scope, (payload,), final=final, writer=writer)

    async def append_many(self, scope: str, payloads: Sequence[bytes], *, final: bool = False,
                          writer: tuple[str, int] | None = None) -> int:
        """Append ``payloads`` in order, in one round trip; the seq of the first (the rest follow it).

        The same guarantees as :meth:`append`, for the whole batch at once:
        gap-free consecutive seqs, no other writer's entry in between,
        ``final`` marks the last payload, and a retry after a connection failure
        may store the batch twice. An empty batch is an error.

        Appends made while another is in flight (from any scope) go to Redis
        together, in one pipeline (:attr:`batch`, :mod:`daveloper.infra.batching`);
        each still gets its own seq or error. A command queued on :attr:`batch`
        before an append goes out before it, in the same pipeline.
        """
        if not payloads:
            raise ValueError("append_many needs at least one payload")
        keys = self._keys(scope)
        first = int(await redis_call(self.batch.script(
            self._append,
            [keys.stream, keys.meta],
            ["1" if final else "0", self._retention, self._ttl_seconds, keys.tail,
             *(writer if writer is not None else ("", 0)), *payloads],
        )))
        if first < 0:
            raise FailedPrecondition(
                f"event log {scope!r} is finished (final event {-first})",
                reason="EVENT_LOG_FINISHED",
                metadata={"scope": scope, "final_seq": str(-first)},
            )
        return first

    async def last_seq(self, scope: str) -> int:
        """The seq of the scope's last event; 0 if it has none (or was deleted or expired)."""
        return (await self._state(self._keys(scope)))[0]

    async def finished(self, scope: str) -> bool:
        """Whether the scope's final event has been written."""
        return (await self._state(self._keys(scope)))[1] is not None

    async def delete(self, scope: str) -> bool:
        """Remove the scope's log, its state and any cancel request; True if anything existed.

        Following readers that have seen events raise ``CursorExpired`` at
        once; the scope's owner is not told (cancel it first if it runs).
        Scope names should not be reused afterwards: the seq restarts at 1.
        """
        keys = self._keys(scope)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.stream, keys.meta, keys.cancel)
            # wakes followers, which then find the log gone
            pipe.execute_command(publish_command(self._redis), keys.tail, GONE_NOTICE)
            deleted, _ = await redis_call(pipe.execute())
        return bool(deleted)

    async def read(self, scope: str, after_seq: int = 0, *, follow: bool = True) -> AsyncGenerator[Entry, None]:
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
        if not follow:
            async for entry in self._stored(scope, keys, after_seq, last):
                yield entry
            return
        async with self._tails.follow(keys.tail) as follower:
            # Subscribed first, then replayed: whatever is appended after the
            # replay's last read is already in the follower's inbox.
            cursor, replay = after_seq, True
            while True:
                if replay:
                    replay = False
                    async for entry in self._stored(scope, keys, cursor, None):
                        cursor = entry.seq
                        yield entry
                        if entry.final:
                            return
                item = await follower.next()
                if isinstance(item, tuple):
                    seq, payload, is_final = item
                    if seq <= cursor:
                        continue  # the replay already yielded it
                    if seq > cursor + 1:
                        replay = True  # a notice went missing: the stream has it
                        continue
                    cursor = seq
                    yield Entry(seq, payload, is_final)
                    if is_final:
                        return
                elif item is RESYNC:
                    replay = True
                elif item is UNREACHABLE:
                    raise Unavailable(f"event log {scope!r}: Redis is unreachable; resume after seq {cursor}",
                                      retry_after=1.0,
                                      metadata={"scope": scope, "after_seq": str(cursor)})
                else:
                    # VERIFY: deleted, or quiet for a whole TTL (the scope may have
                    # expired unnoticed): does the log still hold what follows the cursor?
                    current = (await self._state(keys))[0]
                    if current < cursor:
                        raise self._expired(scope, cursor, current + 1, "was deleted or expired")
                    replay = current > cursor

    async def _stored(self, scope: str, keys: ScopeKeys, cursor: int, last: int | None) -> AsyncIterator[Entry]:
        """The stored entries after ``cursor`` (up to ``last``, else up to the newest), checked gap-free."""
        end = "+" if last is None else f"{last}-0"
        while last is None or cursor < last:
            batch = cast(list[_RawEntry], await redis_call(self._redis.xrange(
                keys.stream, f"{cursor + 1}-0", end, count=_BATCH
            )))
            if not batch and last is not None:
                # Entries we were due were never returned: the log went away.
                current = (await self._state(keys))[0]
                raise self._expired(scope, cursor, current + 1, "was deleted or expired")
            for entry_id, fields in batch:
                seq = int(entry_id.split(b"-", 1)[0])
                if seq != cursor + 1:
                    raise self._expired(scope, cursor, seq, "no longer holds the events after the cursor")
                cursor = seq
                yield Entry(seq, fields[b"p"], b"f" in fields)
            if len(batch) < _BATCH:
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

        On a cancel the work is cancelled (closing whatever it has open
        upstream) and, once it has stopped, :class:`~daveloper.errors.Cancelled`
        is raised. The work runs in the caller's task, as ``asyncio.timeout``'s
        body does: no task of its own and no task waiting for the cancel, and
        its result is the caller's as soon as it returns. If the cancel watch
        cannot be set up (``Unavailable``), ``work`` is closed without running;
        if a cancel was requested before, it is closed and ``Cancelled`` raised.
        """
        stopper = TaskStopper()
        try:
            watch = self._control.cancellation(scope, stopper)
            await watch.__aenter__()
        except BaseException:
            work.close()
            raise
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_exit(watch)
            if stopper.is_set():
                work.close()
                raise Cancelled("cancelled on request", metadata={"scope": scope})
            stopper.arm()
            try:
                result = await work
            except asyncio.CancelledError:
                if stopper.disarm():  # the cancel was ours (and nobody else's as well)
                    self._cancel_seconds.labels(scope.partition(":")[0]).observe(time.perf_counter() - stopper.told)
                    raise Cancelled("cancelled on request", metadata={"scope": scope}) from None
                raise
            finally:
                stopper.disarm()
        return result

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

