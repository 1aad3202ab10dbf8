"""The Redis client: a configured server, or an embedded Valkey under the data dir.

:func:`open_redis` is the only place that creates the client, so the
connection settings below hold for the whole process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable, register_translation
from daveloper.infra import TimedProbe, redacted_url
from daveloper.infra.valkey import EmbeddedValkey
from daveloper.metrics import Metrics, instrument_redis

T = TypeVar("T")

__all__ = ["MAX_BLOCK_MS", "SOCKET_TIMEOUT", "open_redis", "redis_call", "redis_probe", "reply_text"]

log = logging.getLogger(__name__)

#: Seconds a command may wait for its reply before the connection is dropped.
#:
#: Finite, so that a server that stops answering (half-open TCP, a paused VM)
#: surfaces as an error instead of a task that hangs forever. redis-py applies
#: it to every read, blocking commands included, so ``XREAD BLOCK`` / ``BLPOP``
#: must block for at most :data:`MAX_BLOCK_MS` and loop to wait longer (never
#: ``BLOCK 0``). ``None`` would make blocking reads simple but hide hangs.
SOCKET_TIMEOUT = 30.0
#: Longest block time for blocking commands, with a margin under :data:`SOCKET_TIMEOUT`.
MAX_BLOCK_MS = 20_000
#: Seconds to connect, and for the start-up PING.
CONNECT_TIMEOUT = 5.0
#: A connection idle this long is PINGed before reuse, so a connection a NAT or
#: load balancer dropped in silence is replaced instead of failing a command.
HEALTH_CHECK_INTERVAL = 30


def _unreachable(exc: BaseException) -> Unavailable:
    return Unavailable(f"Redis unavailable: {exc}", retry_after=1.0)


register_translation((RedisConnectionError, RedisTimeoutError), _unreachable)


async def redis_call(call: Awaitable[T]) -> T:
    """Await one redis-py call: "cannot reach Redis" becomes ``Unavailable``, and no cancel is lost.

    Other Redis errors (a bad command, a script error) are bugs and stay what they are.

    On Python 3.11 redis-py's ``asyncio.wait_for`` around socket writes drops a
    cancel that arrives just as the write completes (CPython bpo-42130, fixed in
    3.12): the call returns normally and the task runs on as if never
    cancelled, e.g. a reader would keep tailing for a client that is gone. A
    cancel requested during the call that did not surface is raised here.
    """
    task = asyncio.current_task()
    requested = task.cancelling() if task is not None else 0
    try:
        result = await call
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise _unreachable(exc) from exc
    if task is not None and task.cancelling() > requested:
        raise asyncio.CancelledError
    return result


def reply_text(value: object) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


@asynccontextmanager
async def open_redis(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[Redis]:
    """Yield a client for ``settings.redis_url``, or for an embedded Valkey when it is unset.

    The connection is verified with PING before it is yielded; a server that
    does not answer raises :class:`~daveloper.errors.Unavailable`. On exit the
    client is closed, then the embedded server (if any) is stopped.
    Responses are ``bytes`` (no ``decode_responses``): event payloads are protobuf.
    Every command and pipeline is timed on ``metrics`` (default: the process's).
    """
    async with AsyncExitStack() as stack:
        if settings.redis_url:
            url = settings.redis_url
        else:
            server = await stack.enter_async_context(EmbeddedValkey(settings.data_dir))
            url = server.url
        try:
            client = Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                health_check_interval=HEALTH_CHECK_INTERVAL,
                # Live event-log readers hold no connection while they wait (one pub/sub
                # connection carries every followed scope): the pool serves calls in flight.
                max_connections=settings.redis_max_connections,
            )
        except ValueError as exc:  # redis-py's message names the bad part, not the password
            raise ConfigError(f"invalid Redis URL {redacted_url(url)}: {exc}") from exc
        stack.push_async_callback(client.aclose)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"Redis at {redacted_url(url)} does not answer PING: {exc or type(exc).__name__}",
                retry_after=1.0,
            ) from exc
        log.info("connected to Redis at %s", redacted_url(url))
        yield instrument_redis(client, metrics)


def redis_probe(client: Redis, *, name: str = "redis", timeout: float = 1.0) -> TimedProbe:
    """Health probe for Redis: PING answered within ``timeout``."""
    return TimedProbe(name, client.ping, timeout=timeout)

