"""The ingress's reply listener: one unreadable result fails its own request, not the listener."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.asyncio import Redis

from ingress.replies import Replies
from jobs.results import TaskResult


async def test_an_unreadable_result_fails_only_its_own_wait() -> None:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    replies = Replies(redis)
    replies.start()
    try:
        good = TaskResult(status="completed", output={"x": 1}, error=None, task_id=7, model="m",
                          cost_micros=20_000, updated_at="2026-11-30T00:00:00+00:00")

        async def push(job_id: str, payload: bytes) -> None:
            await asyncio.sleep(0.05)
            await redis.rpush(replies.key, job_id.encode() + b"\0" + payload)

        async def noop() -> None:
            return None

        with pytest.raises(RuntimeError, match="unreadable task result"):
            await asyncio.gather(replies.wait("bad", noop(), 5), push("bad", b'{"status": "completed"}'))
        # The listener still runs: the next result reaches its waiter.
        got, _ = await asyncio.gather(replies.wait("good", noop(), 5), push("good", good.to_json()))
        assert got == good
    finally:
        await replies.close()
        await redis.aclose()
