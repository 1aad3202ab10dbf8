"""The Redis client: a configured server or cluster, or an embedded Valkey under the data dir.

:func:`open_redis` is the only place that creates the client, so the
connection settings below hold for the whole process.

``DAVELOPER_REDIS_URL`` names one server (``redis://``, ``rediss://``,
``unix://``) or a Redis/Valkey Cluster: ``redis+cluster://[user:password@]host:port,host:port,...``
(``rediss+cluster://`` for TLS), any reachable nodes as start-up nodes. The
cluster client is redis-py's ``RedisCluster``; it offers the same command
methods, so components take it where they take a ``Redis`` (see
:func:`is_cluster` for the few places that differ: sharded pub/sub, one
script per slot).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.driver_info import DriverInfo
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daveloper.config import Settings
from daveloper.errors import ConfigError, Unavailable, register_translation
from daveloper.infra import TimedProbe, redacted_url, resp
from daveloper.infra.valkey import EmbeddedValkey
from daveloper.metrics import Metrics, instrument_redis

T = TypeVar("T")

__all__ = [
    "MAX_BLOCK_MS", "SOCKET_TIMEOUT", "connect_redis", "is_cluster", "open_redis", "redis_call", "redis_down",
    "redis_probe", "reply_text",
]

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


#: "Cannot reach Redis": the connection failed, or (on a cluster) the slot's primary is
#: down and no replica has taken over yet (CLUSTERDOWN, MASTERDOWN, TRYAGAIN).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)

register_translation(_UNREACHABLE, _unreachable)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis/Valkey Cluster (keys of one script must share a slot)."""
    return isinstance(client, RedisCluster)


async def redis_down(client: Any, *, within: float = 1.0) -> bool:
    """Whether a single Redis server does not answer a PING within ``within`` seconds.

    Always False on a cluster: there one shard failing over is not "Redis is
    down" (its replica takes over, and writes retried meanwhile go through),
    and a PING would go to every node, the failed one included.
    """
    if is_cluster(client):
        return False
    try:
        async with asyncio.timeout(within):
            await client.ping()
    except (RedisError, TimeoutError, OSError):
        return True
    return False


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
    except _UNREACHABLE as exc:
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
            client = connect_redis(url, max_connections=settings.redis_max_connections)
        except ValueError as exc:  # redis-py's message names the bad part, not the password
            raise ConfigError(f"invalid Redis URL {redacted_url(url)}: {exc}") from exc
        stack.push_async_callback(client.aclose)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.ping()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"Redis at {redacted_url(url)} does not answer PING: {exc or type(exc).__name__}",
                retry_after=1.0,
            ) from exc
        log.info("connected to Redis at %s", redacted_url(url))
        yield instrument_redis(client, metrics)


@functools.cache
def _driver_info() -> DriverInfo:
    """What CLIENT SETINFO reports (redis-py and its version), built once."""
    return DriverInfo()


def connect_redis(url: str, *, max_connections: int = 2000, **extra: Any) -> Redis:
    """A client (not yet connected) for a server URL or a ``redis+cluster://`` URL, with the process's timeouts.

    ``extra`` goes to redis-py as is (tests pass ``decode_responses``). Raises
    ``ValueError`` for a malformed URL.
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        # Live event-log readers hold no connection while they wait (one pub/sub
        # connection carries every followed scope, per node on a cluster): the pool
        # serves calls in flight. On a cluster the limit is per node.
        "max_connections": max_connections,
        # Built once: by default every new connection builds its own, reading redis-py's version from the
        # installed package metadata (~0.8 ms of CPU each, which a burst on a cold pool pays a thousand times).
        "driver_info": _driver_info(),
        **extra,
    }
    resp.install()  # commands packed in C (daveloper.infra.resp)
    scheme = url.partition("://")[0].lower()
    if scheme not in ("redis+cluster", "rediss+cluster"):
        return Redis.from_url(url, **options)
    parts = urlsplit(url)
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a cluster node must be host:port, got {address.strip()!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    query = dict(parse_qsl(parts.query))
    # The cluster client has the command methods of ``Redis`` (not its type): typed as
    # one so that every component takes either.
    return cast(Redis, RedisCluster(
        startup_nodes=nodes,
        username=unquote(user) or query.get("username") or None,
        password=unquote(password) or query.get("password") or None,
        ssl=scheme == "rediss+cluster",
        **options,
    ))


def redis_probe(client: Redis, *, name: str = "redis", timeout: float = 1.0) -> TimedProbe:
    """Health probe for Redis: PING answered within ``timeout``."""
    return TimedProbe(name, client.ping, timeout=timeout)

