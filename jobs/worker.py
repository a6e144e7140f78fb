"""arq's Worker with two changes a gateway needs.

* Wake-up instead of polling: ``JobQueue`` pushes a token on ``syncnode:wake:<pool>`` with
  every enqueue; an idle worker BLPOPs it and starts the job within a millisecond or two.
  ``poll_delay`` stays as a backstop (deferred jobs, lost tokens), so idle Redis traffic is
  one BLPOP per poll_delay instead of a ZRANGEBYSCORE every few milliseconds.
* One round trip to claim a job: arq claims with WATCH / EXISTS / ZSCORE / MULTI-PSETEX-EXEC
  (three round trips and a watched connection); a Lua script does the same checks atomically.
* A lease with a heartbeat: arq holds ``arq:in-progress:<id>`` for the largest job timeout
  + 10 s, so a job on a worker that was killed is re-run only that much later. Here the key
  lives ``lease`` seconds and the worker renews it while the job runs; a dead worker's job is
  picked up again within one lease, however long its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from arq.connections import create_pool, log_redis_info
from arq.worker import Worker

from jobs import keys

log = logging.getLogger("syncnode.worker")

# The same rule as arq's start_jobs: skip a job another worker holds, or one that is no longer
# queued, or one deferred into the future; otherwise take its lock. Returns the score or -1.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return -1 end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return math.floor(tonumber(score))
"""


class SyncNodeWorker(Worker):
    def __init__(self, *args: Any, pool_name: str, lease_seconds: float = 15.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_name = pool_name
        self.lease_seconds = lease_seconds
        self.in_progress_timeout_s = lease_seconds
        self._wake = asyncio.Event()
        self._claim: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM_LUA)
        claim = self._claim
        lease_ms = int(self.lease_seconds * 1000)
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            score = await claim(keys=[keys.in_progress_key_prefix + job_id, self.queue_name],
                                args=[job_id, int(time.time() * 1000), lease_ms])
            if int(score) < 0:
                self.job_counter -= 1
                self.sem.release()
                continue
            t = self.loop.create_task(self.run_job(job_id, int(score)))
            t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = t

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # A freed slot may take a job that is already waiting: look now, not at the next poll.
        self._wake.set()

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        log.info("worker for pool %s: %s", self.pool_name, ", ".join(self.functions))
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        helpers = [asyncio.create_task(self._wake_loop()), asyncio.create_task(self._lease_loop())]
        try:
            while True:
                self._wake.clear()
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the event fires, and the worker would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_delay_s):
                        await self._wake.wait()
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _wake_loop(self) -> None:
        # BLPOP holds its own pooled connection; job work uses others.
        timeout = max(self.poll_delay_s, 0.1)
        while True:
            try:
                if await self.pool.blpop([keys.wake(self.pool_name)], timeout=timeout):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis blip: the poll_delay backstop keeps the worker going.
                log.warning("wake wait failed", exc_info=True)
                await asyncio.sleep(timeout)

    async def _lease_loop(self) -> None:
        ms = int(self.lease_seconds * 1000)
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            running = [jid for jid, t in self.tasks.items() if not t.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for jid in running:
                        pipe.pexpire(keys.in_progress_key_prefix + jid, ms)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
