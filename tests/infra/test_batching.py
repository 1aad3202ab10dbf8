"""Commands queued close together share one pipeline, in order, and each still gets its own reply or error."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from daveloper.infra.batching import MAX_BATCH, CommandBatcher
from daveloper.infra.redis import connect_redis

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def sizes() -> list[float]:
    return []


class Incr:
    """Calls of the INCR script through a batcher."""

    def __init__(self, redis: aioredis.Redis, batcher: CommandBatcher) -> None:
        self.script = redis.register_script(INCR)
        self.batcher = batcher

    async def __call__(self, keys: list[str], args: list[int]) -> object:
        return await self.batcher.script(self.script, keys, args)

    async def aclose(self) -> None:
        await self.batcher.aclose()


@pytest.fixture
async def batcher(redis: aioredis.Redis, sizes: list[float]) -> Incr:
    return Incr(redis, CommandBatcher(redis, observe=sizes.append))


async def test_calls_made_together_go_in_one_pipeline_each_with_its_reply(
        redis: aioredis.Redis, batcher: Incr, sizes: list[float]) -> None:
    replies = await asyncio.gather(*(batcher([f"k{i % 3}"], [1]) for i in range(30)))
    assert sizes == [30]
    # Executed in call order: each key's replies count up 1..10.
    assert [replies[i] for i in range(0, 30, 3)] == list(range(1, 11))
    assert [int(await redis.get(f"k{i}")) for i in range(3)] == [10, 10, 10]


async def test_calls_made_while_a_pipeline_is_in_flight_go_together_in_the_next(
        batcher: Incr, sizes: list[float]) -> None:
    first = asyncio.ensure_future(batcher(["a"], [1]))
    await asyncio.sleep(0)  # the first pipeline is sent
    rest = [asyncio.ensure_future(batcher(["a"], [1])) for _ in range(5)]
    assert await asyncio.gather(first, *rest) == [1, 2, 3, 4, 5, 6]
    assert sizes == [1, 5]


async def test_a_long_queue_is_sent_in_pipelines_of_at_most_max_batch(
        batcher: Incr, sizes: list[float]) -> None:
    replies = await asyncio.gather(*(batcher(["n"], [1]) for _ in range(MAX_BATCH + 5)))
    assert replies == list(range(1, MAX_BATCH + 6))
    assert sizes == [MAX_BATCH, 5]


async def test_one_failing_call_fails_alone(redis: aioredis.Redis, batcher: Incr) -> None:
    await redis.set("text", "not a number")
    replies = await asyncio.gather(batcher(["x"], [1]), batcher(["text"], [1]), batcher(["x"], [1]),
                                   return_exceptions=True)
    assert replies[0] == 1
    assert replies[2] == 2
    assert isinstance(replies[1], ResponseError)
    assert await redis.get("text") == b"not a number"


async def test_a_server_that_lost_the_script_gets_it_again(redis: aioredis.Redis, batcher: Incr) -> None:
    assert await batcher(["s"], [5]) == 5
    await redis.script_flush()
    assert await asyncio.gather(batcher(["s"], [1]), batcher(["s"], [1])) == [6, 7]


async def test_a_call_whose_caller_left_before_its_pipeline_went_out_is_not_sent(
        redis: aioredis.Redis, batcher: Incr, sizes: list[float]) -> None:
    kept = asyncio.ensure_future(batcher(["kept"], [1]))
    await asyncio.sleep(0)  # in flight
    left = asyncio.ensure_future(batcher(["left"], [1]))
    await asyncio.sleep(0)  # queued behind it
    left.cancel()
    assert await kept == 1
    await batcher(["kept"], [1])  # the queue has been sent by now
    assert await redis.get("left") is None
    assert sizes == [1, 1]


async def test_a_connection_failure_fails_every_call_of_its_pipeline(unused_tcp_port: int) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}")
    try:
        batcher = CommandBatcher(client)
        incr = Incr(client, batcher)
        replies = await asyncio.gather(*(incr(["k"], [1]) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(reply, RedisConnectionError) for reply in replies)
        assert batcher._sender is None  # nothing left running
    finally:
        await client.aclose()


async def test_close_finishes_the_calls_in_flight_and_refuses_new_ones(batcher: Incr) -> None:
    calls = [asyncio.ensure_future(batcher(["c"], [1])) for _ in range(3)]
    await asyncio.sleep(0)
    await batcher.aclose()
    assert [call.result() for call in calls] == [1, 2, 3]
    with pytest.raises(RedisConnectionError, match="closed"):
        await batcher(["c"], [1])


async def test_commands_queued_one_after_another_run_in_that_order_in_one_pipeline(
        redis: aioredis.Redis, sizes: list[float]) -> None:
    batcher = CommandBatcher(redis, observe=sizes.append)
    script = redis.register_script("return redis.call('GET', KEYS[1])")
    first = batcher.queue("SET", "order", "set first")
    seen = batcher.queue_script(script, ["order"], [])
    dropped = batcher.queue("DEL", "order")
    assert await asyncio.gather(first, seen, dropped) == [True, b"set first", 1]
    assert sizes == [3]


async def test_a_failing_plain_command_fails_alone(redis: aioredis.Redis) -> None:
    batcher = CommandBatcher(redis)
    await redis.set("text", "not a number")
    replies = await asyncio.gather(batcher.queue("INCR", "text"), batcher.queue("INCR", "n"), return_exceptions=True)
    assert isinstance(replies[0], ResponseError)
    assert replies[1] == 1


async def test_execute_answers_a_group_of_commands_in_order_or_raises_its_first_error(redis: aioredis.Redis) -> None:
    batcher = CommandBatcher(redis)
    assert await batcher.execute([("SET", "g", "1"), ("INCR", "g"), ("GET", "g")]) == [True, 2, b"2"]
    await redis.set("text", "not a number")
    with pytest.raises(ResponseError):
        await batcher.execute([("INCR", "text"), ("SET", "after", "still written")])
    assert await redis.get("after") == b"still written"  # sent together: the others ran


async def test_close_gives_up_on_a_server_that_stopped_answering() -> None:
    """A server that accepts the connection and never replies: closing fails the commands in flight in time."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.Event().wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect_redis(f"redis://127.0.0.1:{port}", protocol=2)
    try:
        batcher = CommandBatcher(client)
        hanging = batcher.queue("SET", "k", "v")
        await asyncio.sleep(0.1)  # sent, and no reply is coming
        await asyncio.wait_for(batcher.aclose(within=0.2), 5)
        with pytest.raises(RedisConnectionError):
            await hanging
    finally:
        await client.aclose()
        server.close()


async def test_a_batch_pipeline_answers_like_redis_pys(redis: aioredis.Redis, sizes: list[float]) -> None:
    batcher = CommandBatcher(redis, observe=sizes.append)
    await redis.hset("h", mapping={"a": "1", "b": "2"})
    await redis.set("text", "not a number")
    async with batcher.pipeline() as pipe:
        pipe.hmget("h", ["a", "b", "c"])
        pipe.execute_command("INCR", "text")
        lookup, failed = await pipe.execute(raise_on_error=False)
    assert lookup == [b"1", b"2", None]
    assert isinstance(failed, ResponseError)
    async with batcher.pipeline() as pipe:
        pipe.execute_command("INCR", "text")
        with pytest.raises(ResponseError):
            await pipe.execute()
    assert sizes == [2, 1]


async def test_atomic_writes_go_out_with_the_rest_as_one_script_call(redis: aioredis.Redis, sizes: list[float]) -> None:
    batcher = CommandBatcher(redis, observe=sizes.append)
    other = batcher.queue("SET", "other", "1")
    writes = batcher.atomic([("SET", "turn", b"\x00record"), ("RPUSH", "turns", "t1"), ("ZADD", "convs", 2.5, "c1"),
                             ("HSET", "work", "turn:t1", "{}")])
    assert await asyncio.gather(other, writes) == [True, [b"OK", 1, 1, 1]]
    assert sizes == [2]
    assert await redis.get("turn") == b"\x00record"
    assert await redis.lrange("turns", 0, -1) == [b"t1"]
    assert await redis.zscore("convs", "c1") == 2.5
    assert await redis.hget("work", "turn:t1") == b"{}"
    await redis.script_flush()  # a server that lost the script: loaded again
    assert await batcher.atomic([("RPUSH", "turns", "t2")]) == [2]


async def _cut_proxy(redis_url: str, marker: bytes) -> asyncio.Server:
    """A proxy to the server at ``redis_url`` that drops the connection just before the client sends ``marker``."""
    target = urlsplit(redis_url)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if target.scheme == "unix":
            up_reader, up_writer = await asyncio.open_unix_connection(target.path)
        else:
            up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)

        async def downstream() -> None:
            while data := await up_reader.read(1 << 16):
                writer.write(data)

        replies = asyncio.ensure_future(downstream())
        try:
            while data := await reader.read(1 << 16):
                if (at := data.find(marker)) >= 0:
                    up_writer.write(data[:at])  # the server gets the command up to the marker, and no more
                    await up_writer.drain()
                    await asyncio.sleep(0.1)
                    break
                up_writer.write(data)
        finally:
            replies.cancel()
            up_writer.close()
            writer.close()

    return await asyncio.start_server(pipe, "127.0.0.1", 0)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "plain pipeline"])
async def test_a_connection_lost_halfway_through_atomic_writes_applies_none_of_them(
        redis: aioredis.Redis, redis_url: str, atomic: bool) -> None:
    proxy = await _cut_proxy(redis_url, b"LAST-WRITE")
    client = connect_redis(f"redis://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    try:
        batcher = CommandBatcher(client)
        writes = [("SET", "first", "1"), ("RPUSH", "second", "2"), ("SET", "third", "LAST-WRITE")]
        with pytest.raises(RedisConnectionError):
            await (batcher.atomic(writes) if atomic else batcher.execute(writes))
    finally:
        await client.aclose()
        proxy.close()
    # The contrast: a plain pipeline cut at the same byte has applied the commands before the cut.
    assert await redis.exists("first", "second", "third") == (0 if atomic else 2)
