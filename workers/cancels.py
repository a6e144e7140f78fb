"""One watcher per worker process for the cancel flags of every stream it is relaying.

A client that goes away sets ``jobs.keys.stream_cancel(job_id)`` (``ingress/v1/relay.py``). Each
stream could poll its own flag, but a worker relaying hundreds of long streams would then make
hundreds of round trips every poll interval; here one loop looks at all of them in one pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from jobs import keys

log = logging.getLogger("syncnode.stream")


class StreamCancels:
    def __init__(self, redis: Redis, every_s: float, background: list[asyncio.Task[Any]]) -> None:
        self.redis = redis
        self.every_s = every_s
        self.background = background
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    def watch(self, job_id: str) -> asyncio.Future[None]:
        """A future that completes when the client of ``job_id`` has gone; ``forget`` it after."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
            self.background.append(self._loop)  # cancelled with the worker's other loops
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[job_id] = fut
        return fut

    def forget(self, job_id: str) -> None:
        fut = self.waiting.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            ids = list(self.waiting)
            if not ids:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.exists(keys.stream_cancel(job_id))
                    found = await pipe.execute()
            except Exception as e:  # a Redis blip is not a cancel: look again next time
                log.warning("cancel flags unreadable (%s); still streaming", e)
                continue
            for job_id, gone in zip(ids, found, strict=True):
                fut = self.waiting.get(job_id)
                if gone and fut is not None and not fut.done():
                    fut.set_result(None)
