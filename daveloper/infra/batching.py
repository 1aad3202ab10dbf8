"""Commands queued close together go to Redis as one pipeline: one write, one read, one connection.

A single script call through redis-py costs 125-150 µs of CPU on its own: a connection
checked out of the pool and back, a write under ``asyncio.wait_for``, a read under a
timeout, the retry wrapper. In a pipeline of many, the same call costs about 27 µs
(``scripts/bench/appends.py``). Event-log appends come in bursts when many turns
stream at once (their model tokens arrive together), and each paid the full price
exactly when the loop was busiest.

:class:`CommandBatcher` is a group commit: at most one pipeline is in flight, and
commands queued meanwhile wait for it and go together in the next. A lone command
goes out at the loop's next step, so an idle server adds no delay, and a busy one
sends fewer, larger pipelines instead of more calls.

* Each command gets its own reply or its own error, as if sent alone; a connection
  failure fails every command of its pipeline (callers retry as they would a single
  call).
* :meth:`CommandBatcher.queue` queues at once and returns a future: commands queued
  one after another go out in that order, in one pipeline on one connection, so a
  single server runs them in that order (a cluster's pipeline sends each node its own
  part, so only commands on one node keep their order there).
* A command whose future is cancelled before its pipeline is sent (its caller left)
  is not sent.
* :meth:`CommandBatcher.atomic` sends a few writes as one script call, so they all apply or
  none does (a transaction's guarantee) while still going out with the rest.
* A script is loaded (``SCRIPT LOAD``) before the first pipeline that calls it, so
  its calls keep their place in the order. ``NOSCRIPT`` later (a server restarted
  without it) is answered by calling the script alone, which loads it again: that
  call then runs after the rest of its pipeline.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from daveloper.infra.redis import is_cluster

__all__ = ["CLOSE_SECONDS", "MAX_BATCH", "BatchPipeline", "CommandBatcher"]

#: Commands per pipeline at most; a longer queue goes out in several, one after another.
MAX_BATCH = 1024
#: Seconds :meth:`CommandBatcher.aclose` waits for the commands in flight before failing them.
CLOSE_SECONDS = 5.0

#: Runs commands whose first argument is their key, in order, as one script (atomic, as MULTI/EXEC is).
#: KEYS: each command's key; ARGV: for each command its name, the count of its other arguments, then those.
_ATOMIC = """
local at, replies = 1, {}
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[at + 1])
  replies[i] = redis.call(ARGV[at], key, unpack(ARGV, at + 2, at + 1 + count))
  at = at + 2 + count
end
return replies
"""


@dataclass(slots=True)
class _Queued:
    command: tuple[Any, ...]
    future: asyncio.Future[Any]
    #: For EVALSHA: the script, its keys and arguments (to run it alone if the server lost it).
    script: tuple[AsyncScript, Sequence[Any], Sequence[Any]] | None = None


class CommandBatcher:
    """Sends the commands queued on it in pipelines of whatever is waiting, on ``redis`` (a client or a cluster).

    ``observe`` is told each pipeline's size (a histogram's ``observe``). Close with :meth:`aclose`.
    """

    def __init__(self, redis: Any, *, observe: Callable[[float], object] | None = None) -> None:
        self._redis = redis
        self._observe = observe
        self._waiting: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        #: Scripts this batcher has loaded (by SHA1).
        self._loaded: set[str] = set()
        self._atomic = redis.register_script(_ATOMIC)
        self._clustered = is_cluster(redis)

    def queue(self, *command: Any) -> asyncio.Future[Any]:
        """Queue ``command`` now; its reply (or error: redis-py's exceptions) is the future's."""
        return self._queue(_Queued(command, asyncio.get_running_loop().create_future()))

    def queue_script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue a call of ``script`` (registered on the same client) now, as :meth:`queue`."""
        return self._queue(_Queued(("EVALSHA", script.sha, len(keys), *keys, *args),
                                   asyncio.get_running_loop().create_future(), (script, keys, args)))

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The reply of a call of ``script``, sent with whatever else is queued."""
        return await self.queue_script(script, keys, args)

    async def execute(self, commands: Sequence[Sequence[Any]], *, raise_on_error: bool = True) -> list[Any]:
        """Queue ``commands`` in order and return their replies once all have answered: the first error raised,
        or with ``raise_on_error=False`` each error as its command's reply (as redis-py's ``Pipeline.execute``)."""
        replies = await asyncio.gather(*(self.queue(*command) for command in commands), return_exceptions=True)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies

    def atomic(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` (each ``(name, key, *args)``) now, to apply all together: no other client
        sees some of them without the rest, and a connection lost on the way applies none.

        The future's result is their replies as a script returns them (``OK`` is ``b"OK"``).
        On a cluster the keys may live on different nodes, so there the commands are queued one
        by one, not atomically (the callers undo what a failure left, as after an error).
        """
        if self._clustered:
            return asyncio.gather(*(self.queue(*command) for command in commands))
        keys = [command[1] for command in commands]
        args: list[Any] = []
        for name, _, *rest in commands:
            args += [name, len(rest), *rest]
        return self.queue_script(self._atomic, keys, args)

    def pipeline(self) -> BatchPipeline:
        """A pipeline-like view (``execute_command``, ``hmget``, ``execute``) whose commands go out with the rest."""
        return BatchPipeline(self)

    async def aclose(self, *, within: float = CLOSE_SECONDS) -> None:
        """Refuse new commands and let the pipeline in flight, and the commands waiting for it, finish;
        after ``within`` seconds (a server that stopped answering) they fail instead."""
        self._closed = True
        sender = self._sender
        if sender is None:
            return
        _, pending = await asyncio.wait([sender], timeout=within)
        if pending:
            sender.cancel()
            await asyncio.wait([sender])

    def _queue(self, queued: _Queued) -> asyncio.Future[Any]:
        if self._closed:
            queued.future.set_exception(RedisConnectionError("the command batcher is closed"))
            return queued.future
        self._waiting.append(queued)
        if self._sender is None:
            # A context of its own: the pipeline is nobody's call in particular (no caller's span is its parent).
            self._sender = asyncio.get_running_loop().create_task(self._send_waiting(), name="command batch",
                                                                  context=contextvars.Context())
        return queued.future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._send([queued for queued in batch if not queued.future.done()])  # done: its caller left
        finally:
            self._sender = None
            waiting, self._waiting = self._waiting, []  # left only if this task was cancelled
            _fail(waiting, RedisConnectionError("the command batcher stopped"))

    async def _send(self, batch: list[_Queued]) -> None:
        if not batch:
            return
        if self._observe is not None:
            self._observe(len(batch))
        try:
            for queued in batch:
                if queued.script is not None and queued.script[0].sha not in self._loaded:
                    await self._redis.script_load(queued.script[0].script)
                    self._loaded.add(queued.script[0].sha)
            async with self._redis.pipeline(transaction=False) as pipe:
                for queued in batch:
                    pipe.execute_command(*queued.command)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every command of the pipeline fails alike
            _fail(batch, exc)
            return
        except BaseException:  # this task was cancelled (the loop is closing)
            _fail(batch, RedisConnectionError("the command batcher stopped"))
            raise
        for queued, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and queued.script is not None:
                script, keys, args = queued.script
                self._loaded.discard(script.sha)
                try:
                    reply = await script(keys=keys, args=args)  # loads the script, then runs it
                except Exception as exc:
                    reply = exc
            if queued.future.done():
                continue
            if isinstance(reply, Exception):
                queued.future.set_exception(reply)
            else:
                queued.future.set_result(reply)


class BatchPipeline:
    """The part of redis-py's non-transactional pipeline its callers here use, queueing on a :class:`CommandBatcher`.

    Commands queued on it go out in order, together, with whatever else the batcher holds then;
    :meth:`execute` answers like ``Pipeline.execute``.
    """

    def __init__(self, batcher: CommandBatcher) -> None:
        self._batcher = batcher
        self._commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> BatchPipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._commands = []

    def execute_command(self, *command: Any) -> BatchPipeline:
        self._commands.append(command)
        return self

    def hmget(self, name: Any, keys: Sequence[Any]) -> BatchPipeline:
        return self.execute_command("HMGET", name, *keys)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """The replies in order; with ``raise_on_error=False`` an error is its command's reply instead of raised."""
        commands, self._commands = self._commands, []
        return await self._batcher.execute(commands, raise_on_error=raise_on_error)


def _fail(batch: list[_Queued], error: Exception) -> None:
    for queued in batch:
        if not queued.future.done():
            queued.future.set_exception(error)
