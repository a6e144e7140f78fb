"""The worker's one watcher of stream cancel flags: a set flag ends the wait, an unreadable
Redis does not (a blip is not a client going away)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from jobs import keys
from storage.embedded import free_port
from workers.cancels import StreamCancels


async def test_flags_of_many_streams_are_seen_and_only_theirs(app: Any) -> None:
    redis = app.state.sn.redis
    background: list[asyncio.Task[Any]] = []
    watch = StreamCancels(redis, 0.02, background)
    futs = {f"job-{i}": watch.watch(f"job-{i}") for i in range(50)}
    await redis.set(keys.stream_cancel("job-7"), b"1", ex=10)
    await asyncio.wait_for(futs["job-7"], 2)
    await asyncio.sleep(0.1)
    assert [j for j, f in futs.items() if f.done()] == ["job-7"]
    watch.forget("job-3")
    assert futs["job-3"].cancelled() and "job-3" not in watch.waiting
    for t in background:
        t.cancel()
    await asyncio.gather(*background, return_exceptions=True)


async def test_an_unreadable_redis_is_not_a_cancel() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.05)
    background: list[asyncio.Task[Any]] = []
    fut = StreamCancels(dead, 0.02, background).watch("job")
    await asyncio.sleep(0.3)
    assert not fut.done() and not background[0].done()  # still watching
    background[0].cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await dead.aclose()
