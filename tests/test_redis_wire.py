"""Commands packed by hiredis are the bytes redis-py would send, and reach a real Redis intact."""

from __future__ import annotations

import os

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from storage.redis_wire import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    packed_by_hiredis,
)

ARGS: list[tuple[object, ...]] = [
    ("SET", "k", "v"),
    ("EVALSHA", "ab" * 20, 2, "arq:job:x", "q", 86_400_000, b"\x80\x00payload", 1.5, -7, 2**70),
    ("HSET", "syncnode:task:x", "output", "é ☃ \U0001f600", "n", 0.1),
    ("CLIENT SETNAME", "worker"),
    (b"CLIENT SETNAME", b"worker"),
    ("SET", "k", memoryview(b"bytes")),
]


@pytest.mark.parametrize("args", ARGS)
def test_the_bytes_are_redis_pys(args: tuple[object, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True, object()])
def test_what_cannot_be_encoded_is_redis_pys_error(bad: object) -> None:
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", bad)


def test_each_kind_of_url_keeps_its_transport() -> None:
    for url, cls in [("redis://127.0.0.1:1", HiredisConnection), ("rediss://127.0.0.1:1", HiredisSSLConnection),
                     ("unix:///tmp/redis.sock", HiredisUnixConnection)]:
        pool = packed_by_hiredis(BlockingConnectionPool.from_url(url))
        assert pool.connection_class is cls
    assert issubclass(HiredisSSLConnection, SSLConnection)
    assert issubclass(HiredisUnixConnection, UnixDomainSocketConnection)


async def test_a_real_redis_reads_back_what_was_sent() -> None:
    redis = Redis.from_pool(packed_by_hiredis(BlockingConnectionPool.from_url(os.environ["REDIS_URL"])))
    try:
        value = "é ☃ \U0001f600 " + "x" * 100_000
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set("wire:a", value)
            pipe.hset("wire:h", mapping={"n": 7, "f": 0.25, "b": b"\x00\xff"})
            pipe.get("wire:a")
            pipe.hgetall("wire:h")
            res = await pipe.execute()
        assert res[2].decode() == value
        assert res[3] == {b"n": b"7", b"f": b"0.25", b"b": b"\x00\xff"}
        assert await redis.client_setname("wire-test")
        assert await redis.client_getname() in (b"wire-test", "wire-test")
    finally:
        await redis.aclose()
