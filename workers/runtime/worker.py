"""arq's Worker with the changes a gateway needs.

* Wake-up instead of polling: ``JobQueue`` pushes a token on ``syncnode:wake:<pool>`` with
  every enqueue of a runnable job. An idle worker waits in a BLPOP on that list with its claim
  script pipelined behind it, so Redis takes the job for it the moment the token lands: waking
  and claiming are one round trip. ``poll_delay`` bounds the wait (a backstop for lost
  tokens), so idle Redis traffic is one BLPOP per poll_delay, not a ZRANGEBYSCORE every few ms.
* Deferred jobs on time: an enqueue wakes no one for a job that is not runnable yet, so the
  claim also reports the earliest future score and the next wait ends then (at least
  ``_MIN_SLEEP_S``, at most ``poll_delay``).
* One round trip to take jobs: arq reads the queue, then claims each job with WATCH / EXISTS /
  ZSCORE / MULTI-PSETEX-EXEC (three round trips and a watched connection per job); a Lua script
  does the read and every claim atomically.
* The claim also reads the job: arq's run_job opens each job with a MULTI/EXEC (GET the job,
  INCR its try counter, ZREM it from the abort set); the claim script does those commands for
  every job it takes and hands their replies to ``workers/runtime/runloop.py``, arq's run_job from there on.
* Finishing in batches: arq ends every job with its own MULTI/EXEC of five commands; here the
  jobs that finish while one finish is in flight share the next, and it is one script
  (``scripts.py`` FINISH_LUA, ``jobs/batch.py``).
* A lease with a heartbeat: arq holds ``arq:in-progress:<id>`` for the largest job timeout
  + 10 s, so a job on a worker that was killed is re-run only that much later. Here the key
  lives ``lease`` seconds and the worker renews it while the job runs; a dead worker's job is
  picked up again within one lease, however long its timeout.
* SIGTERM (and a first SIGINT) drain instead of cancelling: the worker stops taking jobs, lets
  the running ones finish for ``shutdown_grace_seconds``, cancels what is left (arq puts those
  back on the queue) and exits 0. arq's own handler cancels every running job at once, so a
  rolling restart would re-run (and re-call the provider for) every job in flight. A second
  signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

from arq.connections import create_pool, log_redis_info
from arq.constants import abort_jobs_ss
from arq.utils import to_ms
from arq.worker import Worker
from redis.exceptions import NoScriptError, RedisError

from jobs import keys
from jobs.batch import Combiner
from storage.redis_wire import packed_by_hiredis
from workers.runtime.runloop import parse_claimed, run_claimed
from workers.runtime.scripts import CLAIM_LUA, FINISH_LUA, RELEASE_LUA, RENEW_LUA

log = logging.getLogger("syncnode.worker")

# A stream of jobs falling due is taken in batches this far apart, not one look per job.
_MIN_SLEEP_S = 0.02

class SyncNodeWorker(Worker):
    def __init__(self, *args: Any, pool_name: str, lease_seconds: float = 15.0,
                 shutdown_grace_seconds: float = 30.0, **kwargs: Any) -> None:
        self.shutdown_grace_s = shutdown_grace_seconds
        self._draining: asyncio.Task[None] | None = None
        super().__init__(*args, **kwargs)
        self.pool_name = pool_name
        self.lease_seconds = lease_seconds
        self.in_progress_timeout_s = lease_seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._claim: Any = None
        self._next_due_ms = -1.0  # from the last claim: earliest deferred job, -1 if none
        self._finishes: Combiner[str, tuple[Any, ...], None] = Combiner(self._finish_batch)
        self._finish: Any = None  # FINISH_LUA, registered once the pool exists

    async def _poll_iteration(self, block: float = 0.0) -> None:
        """arq's poll iteration, with the queue read and every claim in one round trip.

        With ``block`` > 0 the claim is pipelined behind a BLPOP on the pool's wake list: Redis
        runs it the moment a token arrives (or the block ends), so waking up and taking the
        jobs cost one round trip, and this loop is the only one that ever claims.
        """
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        if self.allow_pick_jobs and free > 0:
            *raw, next_due = await self._claim_jobs(free, block)
            self._next_due_ms = float(next_due)
            claimed = parse_claimed(raw, self.allow_abort_jobs)
            if not self.allow_pick_jobs:  # a stop signal arrived while the claim was in flight
                await self._hand_back([c.job_id for c in claimed])
                claimed = []
            for job in claimed:
                await self.sem.acquire()
                self.job_counter += 1
                t = self.loop.create_task(run_claimed(self, job))
                t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job.job_id] = t
            if claimed:
                # The jobs just taken send their first request (the task's read) before this loop
                # re-arms its claim: at concurrency 1 that write went first, on the answer's path.
                await asyncio.sleep(0)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()  # surface errors from run_job, as arq does
        await self.heart_beat()

    async def _claim_jobs(self, free: int, block: float) -> list[Any]:
        ks = [self.queue_name, keys.wake(self.pool_name)]
        args = [0, self.queue_read_limit, free, int(self.lease_seconds * 1000), keys.in_progress_key_prefix,
                self.token, keys.job_key_prefix, keys.retry_key_prefix, abort_jobs_ss if self.allow_abort_jobs else ""]
        if self._claim is None:
            self._claim = await self.pool.script_load(CLAIM_LUA)
        if block > 0:
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.blpop([keys.wake(self.pool_name)], timeout=block)
                pipe.evalsha(self._claim, len(ks), *ks, *args)
                woken, claimed = await pipe.execute(raise_on_error=False)
            if isinstance(woken, Exception):
                raise woken
            if not isinstance(claimed, Exception):
                return list(claimed)
            if not isinstance(claimed, NoScriptError):
                raise claimed
        try:
            return list(await self.pool.evalsha(self._claim, len(ks), *ks, *args))
        except NoScriptError:  # Redis restarted or flushed its scripts
            self._claim = await self.pool.script_load(CLAIM_LUA)
            return list(await self.pool.evalsha(self._claim, len(ks), *ks, *args))

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None,
                         result_timeout_s: float | None, keep_result_forever: bool, incr_score: int | None,
                         keep_in_progress: float | None) -> None:
        await self._finishes.submit("", (job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                         incr_score, keep_in_progress))

    async def _finish_batch(self, _: str, items: list[tuple[Any, ...]]) -> list[None]:
        # arq's finish_job for every job of the batch, in one script (scripts.py FINISH_LUA).
        args: list[Any] = [self.token, keys.in_progress_key_prefix, keys.result_key_prefix, keys.retry_key_prefix,
                           keys.job_key_prefix]
        for job_id, finish, result_data, result_timeout_s, forever, incr_score, keep_in_progress in items:
            px = None if forever else to_ms(result_timeout_s)
            args += [job_id, "1" if finish else "", result_data or "", "" if px is None else px,
                     "" if keep_in_progress is None else to_ms(keep_in_progress), incr_score or ""]
        if self._finish is None:
            self._finish = self.pool.register_script(FINISH_LUA)  # EVALSHA, loaded again on NOSCRIPT
        await self._finish(keys=[self.queue_name, abort_jobs_ss], args=args)
        return [None] * len(items)

    async def record_health(self) -> None:
        """arq's health key, plus one per worker: arq's is shared by every worker of the pool,
        so it says whether one is alive, not how many (``syncnode queue stats`` counts these)."""
        before = self._last_health_check
        await super().record_health()
        if self._last_health_check != before:
            ongoing = sum(not t.done() for t in self.tasks.values())
            info = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid={os.getpid()} "
                    f"j_complete={self.jobs_complete} j_failed={self.jobs_failed} j_retried={self.jobs_retried} "
                    f"j_ongoing={ongoing}")
            await self.pool.psetex(keys.worker_health(self.pool_name, self.token),
                                   int((self.health_check_interval + 5) * 1000), info.encode())

    def _release_sem_dec_counter_on_complete(self) -> None:
        full = self.job_counter >= self.max_jobs
        super()._release_sem_dec_counter_on_complete()
        if full:
            # Jobs may have been left waiting while every slot was taken: look now, not at the
            # next poll. (Below capacity, every job already got its own wake-up.)
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
            # Commands packed in C (storage/redis_wire.py): the connection create_pool opened
            # for its ping is dropped so that every connection of the pool packs alike.
            await self._pool.connection_pool.disconnect()
            self._pool.connection_pool.reset()
            packed_by_hiredis(self._pool.connection_pool)
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        # Logged once started up: tests and operators read it as "ready".
        log.info("worker for pool %s: %s", self.pool_name, ", ".join(self.functions))
        lease = asyncio.create_task(self._lease_loop())
        block = 0.0
        try:
            while True:
                self._wake.clear()
                try:
                    await self._poll_iteration(block)
                except (OSError, RedisError):  # Redis blip: wait a moment, then look again
                    log.warning("taking jobs failed", exc_info=True)
                    await asyncio.sleep(min(1.0, self.poll_delay_s))
                if self.burst and await self._burst_done():
                    return
                if self.allow_pick_jobs and self.job_counter < self.max_jobs and not self.burst:
                    block = self._until_next_due()  # the next iteration blocks in Redis
                    continue
                # Full (a finishing job sets _wake), or burst mode. asyncio.timeout, not
                # wait_for: on 3.11 wait_for can swallow a cancellation that lands as the event
                # fires, and the worker would then never stop.
                block = 0.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_delay_s):
                        await self._wake.wait()
        finally:
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)

    async def _hand_back(self, job_ids: list[str]) -> None:
        """Release jobs claimed after a stop signal, and wake other workers for them. The claim
        counted a try for each: given back too, since none of them ran."""
        if not job_ids:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.eval(RELEASE_LUA, 1, keys.in_progress_key_prefix + jid, self.token)
                pipe.decr(keys.retry_key_prefix + jid)
            pipe.lpush(keys.wake(self.pool_name), *["1"] * len(job_ids))
            await pipe.execute()

    def handle_sig(self, signum: int) -> None:
        """arq's handler, except that SIGTERM and a first SIGINT drain (see the module docstring)."""
        if signum not in (signal.SIGTERM, signal.SIGINT) or self._draining is not None:
            super().handle_sig(signal.Signals(signum))
            return
        log.info("%s: taking no more jobs; %d running, %.0f s to finish", signal.Signals(signum).name,
                 sum(not t.done() for t in self.tasks.values()), self.shutdown_grace_s)
        self.allow_pick_jobs = False
        self._wake.set()
        self._draining = self.loop.create_task(self._drain(signal.Signals(signum)))

    async def _drain(self, sig: signal.Signals) -> None:
        deadline = time.monotonic() + self.shutdown_grace_s
        while any(not t.done() for t in self.tasks.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = [t for t in self.tasks.values() if not t.done()]
        if left:
            log.warning("%d jobs still running after %.0f s: cancelled, they go back on the queue",
                        len(left), self.shutdown_grace_s)
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self.main_task is not None:
            self.main_task.cancel()
        if self.on_stop is not None:
            self.on_stop(sig)

    async def close(self) -> None:
        # arq's close gathers the job tasks without return_exceptions: one cancelled job would
        # raise out of it and the process would exit non-zero after a clean drain.
        if not self._handle_signals:
            super().handle_sig(signal.SIGUSR1)  # arq's close: cancel what runs
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await super().close()

    def _until_next_due(self) -> float:
        """Seconds until the earliest deferred job is due, within [_MIN_SLEEP_S, poll_delay]."""
        if self._next_due_ms < 0:
            return float(self.poll_delay_s)  # nothing deferred
        wait = (self._next_due_ms - time.time() * 1000) / 1000
        return float(min(self.poll_delay_s, max(_MIN_SLEEP_S, wait)))

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _lease_loop(self) -> None:
        ms = int(self.lease_seconds * 1000)
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            running = [jid for jid, t in self.tasks.items() if not t.done()]
            if not running:
                continue
            try:
                locks = [keys.in_progress_key_prefix + jid for jid in running]
                await self.pool.eval(RENEW_LUA, len(locks), *locks, self.token, ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
