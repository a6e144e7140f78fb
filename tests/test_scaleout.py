"""Scale-out on one Redis, against real processes (issue 11, "Proven scale-out and restarts").

Scenarios:
* ``two / four workers``: N ``syncnode worker chat`` processes share one queue; every job runs
  exactly once (the fake provider's call log, counted per prompt), each task is charged once,
  and every worker took some of the jobs (the lease locks name their holder).
* ``SIGKILL one of two under load``: 200 jobs in flight across two workers; one is killed; every
  task still ends completed, charged once, and none that completed is refunded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from redis.asyncio import Redis

from tests.fixtures.cluster import Cluster, audit, calls_for, prompt, submit_async, wait_terminal

pytestmark = pytest.mark.slow


async def _sample_holders(redis_url: str, holders: set[str]) -> None:
    """Who holds job leases (the lock value is the worker's host:pid:nonce), sampled until cancelled."""
    r = Redis.from_url(redis_url)
    try:
        while True:
            locks = [k async for k in r.scan_iter("arq:in-progress:*", count=1000)]
            values = await r.mget(locks) if locks else []
            holders.update(v.decode().split(":")[1] for v in values if v and v.count(b":") >= 2)
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


@pytest.mark.parametrize("n", [2, 4], ids=["two workers", "four workers"])
async def test_workers_on_one_redis_run_every_job_exactly_once(workers: Cluster, n: int) -> None:
    c = workers
    procs = [c.start_worker("chat", SYNCNODE_CHAT_CONCURRENCY="5") for _ in range(n)]
    acct = c.account()
    prompts = [prompt(f"scale-{n}") for _ in range(200)]
    holders: set[str] = set()
    sampler = asyncio.create_task(_sample_holders(c.redis.url, holders))
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as h:
        ids = await submit_async(h, acct, "slow-0.1", prompts)
        rows = await wait_terminal(c.pg.dsn, ids, timeout=120)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    assert {r["status"] for r in rows} == {"completed"}
    assert all(list(r["ledger"]) == ["charge"] for r in rows)
    assert [calls_for(p) for p in prompts] == [1] * len(prompts)
    assert {str(p.pid) for p in procs} <= holders  # every worker took jobs (stale locks of earlier ones aside)
    balance, total = await audit(c.pg.dsn, acct["uid"])
    assert balance == total == 1000_000_000 + 5_000_000 - 200 * 20_000


async def _in_flight(redis_url: str, job_ids: list[str], want: int, timeout: float) -> set[str]:
    """Wait until ``want`` of the jobs are held by workers at once; the pids holding them."""
    r = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            values = [v for v in await r.mget([f"arq:in-progress:{j}" for j in job_ids]) if v]
            if len(values) >= want:
                return {v.decode().split(":")[1] for v in values}
            assert time.monotonic() < deadline, f"only {len(values)} of {want} jobs in flight at once"
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def test_sigkill_one_of_two_workers_under_load_loses_nothing(workers: Cluster) -> None:
    c = workers
    victim = c.start_worker("chat", SYNCNODE_CHAT_CONCURRENCY="100")
    survivor = c.start_worker("chat", SYNCNODE_CHAT_CONCURRENCY="100")
    acct = c.account()
    prompts = [prompt("sigkill") for _ in range(200)]
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as h:
        ids = await submit_async(h, acct, "slow-6", prompts)
        assert await _in_flight(c.redis.url, ids, 200, timeout=30) == {str(victim.pid), str(survivor.pid)}
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        rows = await wait_terminal(c.pg.dsn, ids, timeout=120)
    assert survivor.poll() is None
    assert {r["status"] for r in rows} == {"completed"}
    assert not any(r["refunded"] for r in rows)
    assert all(list(r["ledger"]) == ["charge"] for r in rows)  # charged once each
    # The killed worker's jobs ran again on the survivor; none was lost.
    assert all(calls_for(p) >= 1 for p in prompts)
    assert sum(calls_for(p) for p in prompts) > len(prompts)
    balance, total = await audit(c.pg.dsn, acct["uid"])
    assert balance == total == 1000_000_000 + 5_000_000 - 200 * 20_000
