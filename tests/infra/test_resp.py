"""Commands packed by hiredis: the same bytes as redis-py's own packer, and a real server answers them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from daveloper.infra import resp
from daveloper.infra.redis import connect_redis

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 3, "chat:{s1:c1}:log", b"chat:{s1:c1}:meta", "k", b"\x00\xff" * 100, 86400, 1000),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETINFO", b"LIB-NAME", "redis-py"),
    ("SET", "é-ü-中", "x" * 100_000),
    ("HSET", "h", "f", 0.1, "g", 1e16, "i", -0.0, "j", 10**30, "k", -5, "l", ""),
    ("SET", "mv", memoryview(b"abc")),
    ("SET", "ba", bytearray(b"abc")),
]


@pytest.fixture
def stock() -> Iterator[None]:
    before = AbstractConnection.pack_command
    AbstractConnection.pack_command = resp._stock  # type: ignore[method-assign]
    yield
    AbstractConnection.pack_command = before  # type: ignore[method-assign]


@pytest.mark.usefixtures("stock")
def test_every_argument_type_packs_to_the_same_bytes() -> None:
    connection = Connection()
    before = [b"".join(bytes(piece) for piece in connection.pack_command(*args)) for args in COMMANDS]
    resp.install()
    assert resp.installed()
    after = [connection.pack_command(*args) for args in COMMANDS]
    assert all(len(pieces) == 1 for pieces in after[:-1])  # one buffer, built in C (the bytearray is not)
    assert [b"".join(pieces) for pieces in after] == before


@pytest.mark.usefixtures("stock")
def test_arguments_redis_py_refuses_are_still_refused() -> None:
    resp.install()
    connection = Connection()
    for bad in (True, None):
        with pytest.raises(DataError):
            connection.pack_command("SET", "k", bad)


async def test_a_client_packs_in_c_and_a_real_server_answers(redis_url: str) -> None:
    client = connect_redis(redis_url)
    try:
        assert resp.installed()
        await client.hset("resp:test", mapping={"text": "é-中", "float": 0.5, "int": 7})
        assert await client.hgetall("resp:test") == {b"text": "é-中".encode(), b"float": b"0.5", b"int": b"7"}
        assert (await client.config_get("maxmemory"))  # a two-word command name
        await client.delete("resp:test")
    finally:
        await client.aclose()
