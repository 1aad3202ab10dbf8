"""Live logs from every instance: records published to Redis, tailed by ``LogsService.Tail``.

:class:`LogPublisher` is a ``logging.Handler`` on the root logger. ``emit``
never blocks and never does I/O: it turns the record into a ``LogRecord``
message (with the request id and session of the RPC that logged it, from the
ContextVars) and puts it on a bounded queue — from any thread — which one task
publishes to the Redis channel ``<prefix>logs`` (``dv:logs``). Each record is redacted first
(:mod:`daveloper.logredaction`), like the JSON log's. When the queue is full the record
is dropped and counted, so a log storm can slow nothing. Records of the Redis
client itself are not published (they could feed back into the publisher).

:func:`tail` subscribes to the channel on any instance and yields the records
that pass the caller's filters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

from daveloper.errors import Unavailable
from daveloper.infra.redis import redis_call
from daveloper.jsonlog import extra_fields
from daveloper.keys import DEFAULT_KEYS, Keys
from daveloper.logredaction import RedactingFilter, Redactor
from daveloper.rpc.context import request_id_var, session_id_var
from generated.daveloper.v1 import LogLevel, LogRecord

__all__ = ["LEVELS", "LogPublisher", "tail"]

LEVELS = {logging.DEBUG: LogLevel.DEBUG, logging.INFO: LogLevel.INFO, logging.WARNING: LogLevel.WARNING,
          logging.ERROR: LogLevel.ERROR, logging.CRITICAL: LogLevel.ERROR}
_QUIET = ("redis", "daveloper.logstream", "asyncio")


def _level(levelno: int) -> LogLevel:
    return LEVELS.get(levelno, LogLevel.ERROR if levelno > logging.ERROR else LogLevel.DEBUG)


class LogPublisher(logging.Handler):
    """Publishes log records to Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, instance: str, capacity: int = 10_000,
                 redactor: Redactor | None = None, keys: Keys = DEFAULT_KEYS) -> None:
        super().__init__()
        self._channel = keys.logs_channel
        # Without configured secrets, credentials are still redacted by their shape.
        self.addFilter(RedactingFilter(redactor or Redactor()))
        self._redis = redis
        self._instance = instance
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(capacity)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_QUIET):
            return
        try:
            message = LogRecord(
                time=datetime.datetime.fromtimestamp(record.created, datetime.UTC), level=_level(record.levelno),
                logger=record.name, message=record.getMessage()[:8192], request_id=request_id_var.get(),
                session_id=str(getattr(record, "session_id", "") or session_id_var.get()),
                job_id=str(getattr(record, "job_id", "") or ""), instance=self._instance,
                fields={k: str(v)[:1024] for k, v in extra_fields(record).items()
                        if k not in ("session_id", "job_id")},
            )
            payload = bytes(message)
        except Exception:  # a record that cannot be formatted must not break the caller
            self.handleError(record)
            return
        if self._task is None or self._loop.is_closed():
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._put, payload)
        else:
            self._put(payload)

    def _put(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        """Attach to the root logger and start publishing."""
        self._task = self._loop.create_task(self._run(), name="log-publisher")
        logging.getLogger().addHandler(self)

    async def aclose(self) -> None:
        """Detach, then stop publishing (records still queued are dropped)."""
        logging.getLogger().removeHandler(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Publish queued records until cancelled; a Redis outage drops records, it does not stop the task."""
        while True:
            payload = await self._queue.get()
            try:
                await redis_call(self._redis.publish(self._channel, payload))  # redis_call: no cancel is lost
            except (Unavailable, aioredis.RedisError):
                self.dropped += 1


async def tail(redis: aioredis.Redis, accept: Callable[[LogRecord], bool], *,
               keys: Keys = DEFAULT_KEYS) -> AsyncIterator[LogRecord]:
    """Records published by any instance from now on that ``accept`` lets through."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await redis_call(pubsub.subscribe(keys.logs_channel))
        while True:
            message = await redis_call(pubsub.get_message(timeout=5.0))
            if message is None or message.get("type") != "message":
                continue
            record = LogRecord.parse(message["data"])
            if accept(record):
                yield record
    finally:
        with contextlib.suppress(aioredis.RedisError, RuntimeError):
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
