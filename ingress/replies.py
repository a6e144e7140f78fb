"""Where this ingress process hears that a synchronous task ended: one reply list per process.

A waiting request used to hold a Redis connection of its own in a BLPOP on the task's done list,
its enqueue pipelined in front. Now the enqueue seeds the task's status hash with this process's
reply list (``reply``), the worker's final publish pushes ``<job_id>\\0<result>`` there
(``storage/status.py``), and one loop here takes every result that arrived in one round trip
and wakes the requests that wait for them. Enqueues of waiting requests then share the batched
pipeline of fire-and-poll ones. A result nobody waits for any more (the request timed out) is
dropped; the durable record is the task row, as before.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs import keys
from jobs.results import TaskResult

log = logging.getLogger("syncnode.ingress")

# At most this many results are taken per round trip; the rest wait for the next (at once).
_BATCH = 500
# A listener cancelled inside a pipeline read can hang forever (redis-py under uvloop, seen when
# uvicorn fails to bind and shuts down right after start-up): the shutdown must not wait on it.
CLOSE_WAIT_SECONDS = 2.0


class Replies:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.key = keys.reply(uuid.uuid4().hex)
        self._waiting: dict[str, asyncio.Future[TaskResult]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT_SECONDS)
        for fut in self._waiting.values():
            fut.cancel()

    async def wait(self, job_id: str, enqueue: Awaitable[Any], timeout: float) -> TaskResult | None:
        """Run ``enqueue`` (a coroutine) and wait for the task's result; None after ``timeout``."""
        fut: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = fut
        try:
            await enqueue
            async with asyncio.timeout(timeout):
                result = await fut
            return result
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(job_id, None)

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.blpop([self.key], timeout=1)
                    pipe.lpop(self.key, _BATCH)
                    first, rest = await pipe.execute()
            except RedisError:
                # The waits time out as they did when their own BLPOP failed; keep listening.
                log.warning("reading the reply list failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for raw in ([first[1]] if first else []) + (rest or []):
                job_id, _, payload = raw.partition(b"\0")
                fut = self._waiting.get(job_id.decode())
                if fut is None or fut.done():
                    continue
                try:
                    fut.set_result(TaskResult.from_json(payload))
                except (ValueError, KeyError, TypeError) as e:
                    # One unreadable result fails its own request (500), not the listener that
                    # every synchronous wait of this process depends on.
                    log.error("unreadable result for %s", job_id.decode(), exc_info=True)
                    fut.set_exception(RuntimeError(f"unreadable task result: {e}"))
            if first:
                # The requests just woken answer before the next read is sent: at concurrency 1
                # that write went first, on the answer's path.
                await asyncio.sleep(0)
