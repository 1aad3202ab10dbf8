"""Calls of one Lua script made close together go to Redis as one pipeline: one write, one read, one connection.

A single script call through redis-py costs 125-150 µs of CPU on its own: a connection
checked out of the pool and back, a write under ``asyncio.wait_for``, a read under a
timeout, the retry wrapper. In a pipeline of many, the same call costs about 27 µs
(``scripts/bench/appends.py``). Event-log appends come in bursts when many turns
stream at once (their model tokens arrive together), and each paid the full price
exactly when the loop was busiest.

:class:`ScriptBatcher` is a group commit: at most one pipeline is in flight, and calls
made meanwhile wait for it and go together in the next. A lone call goes out at the
loop's next step, so an idle server adds no delay, and a busy one sends fewer, larger
pipelines instead of more calls. Each call gets its own reply or its own error, as if
made alone; a connection failure fails every call of its pipeline (the callers retry
as they would a single call). A call whose caller is cancelled before its pipeline is
sent is not sent. ``NOSCRIPT`` (a server restarted without the script) is answered by
calling the script alone, which loads it.

On a cluster, redis-py's cluster pipeline sends each node its own part of the batch.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

__all__ = ["MAX_BATCH", "ScriptBatcher"]

#: Calls per pipeline at most; a longer queue goes out in several, one after another.
MAX_BATCH = 1024

_Call = tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Calls ``script`` (registered on ``redis``) in pipelines of whatever calls are waiting.

    ``observe`` is told each pipeline's size (a histogram's ``observe``). Close with :meth:`aclose`.
    """

    def __init__(self, redis: Any, script: AsyncScript, *, observe: Callable[[float], object] | None = None) -> None:
        self._redis = redis
        self._script = script
        self._observe = observe
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply for ``keys`` and ``args``; its error (redis-py's exceptions) if it failed."""
        if self._closed:
            raise RedisConnectionError("the script batcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((keys, args, future))
        if self._sender is None:
            # A context of its own: the pipeline is nobody's call in particular (no caller's span is its parent).
            self._sender = loop.create_task(self._send_waiting(), name="script batch",
                                            context=contextvars.Context())
        return await future

    async def aclose(self) -> None:
        """Refuse new calls and let the pipeline in flight, and the calls waiting for it, finish."""
        self._closed = True
        if self._sender is not None:
            await asyncio.wait([self._sender])

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._send([call for call in batch if not call[2].done()])  # done: its caller left
        finally:
            self._sender = None
            waiting, self._waiting = self._waiting, []  # left only if this task was cancelled
            _fail(waiting, RedisConnectionError("the script batcher stopped"))

    async def _send(self, calls: list[_Call]) -> None:
        if not calls:
            return
        if self._observe is not None:
            self._observe(len(calls))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in calls:
                    pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every call of the pipeline fails alike
            _fail(calls, exc)
            return
        except BaseException:  # this task was cancelled (the loop is closing)
            _fail(calls, RedisConnectionError("the script batcher stopped"))
            raise
        for (keys, args, future), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                try:
                    reply = await self._script(keys=keys, args=args)  # loads the script, then runs it
                except Exception as exc:
                    reply = exc
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


def _fail(calls: list[_Call], error: Exception) -> None:
    for _, _, future in calls:
        if not future.done():
            future.set_exception(error)
