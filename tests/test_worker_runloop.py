"""The worker runs jobs itself once its claim has read them (``workers/runtime/runloop.py``), yet the queue
stays arq's: a plain arq client enqueues into a pool and reads back, with arq's own
``Job.info()`` / ``Job.result()``, what ran, how often, and how it ended."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from arq import Retry, func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import abort_jobs_ss
from arq.jobs import Job, JobStatus
from arq.utils import timestamp_ms

from jobs import keys
from jobs.serialize import dumps, loads
from workers.runtime.worker import SyncNodeWorker

runs: dict[str, int] = {}


async def add(ctx: dict[str, Any], a: int, b: int) -> int:
    return a + b


async def flaky(ctx: dict[str, Any], tag: str) -> dict[str, Any]:
    runs[tag] = runs.get(tag, 0) + 1
    if ctx["job_try"] < 3:
        raise Retry(defer=0.05)
    return {"tries": ctx["job_try"], "runs": runs[tag]}


async def boom(ctx: dict[str, Any]) -> None:
    raise ValueError("provider said no")


async def slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(5)


@pytest.fixture
async def arq_pool(app: Any) -> AsyncIterator[tuple[ArqRedis, str]]:
    pool = f"test-{uuid.uuid4().hex[:8]}"
    settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    w = SyncNodeWorker(functions=[func(add, name="add"), func(flaky, name="flaky", max_tries=5),
                                  func(boom, name="boom"), func(slow, name="slow", timeout=0.3),
                                  func(slow, name="slow_long", timeout=30)],
                       queue_name=keys.queue(pool), redis_settings=settings, pool_name=pool,
                       handle_signals=False, poll_delay=0.1, job_serializer=dumps, job_deserializer=loads,
                       allow_abort_jobs=True, keep_result=60)
    task = asyncio.create_task(w.main())
    client = await create_pool(settings, job_serializer=dumps, job_deserializer=loads,
                               default_queue_name=keys.queue(pool))
    yield client, pool
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await w.pool.aclose()
    await client.aclose()


async def test_an_arq_client_enqueues_and_reads_what_ran(arq_pool: tuple[ArqRedis, str]) -> None:
    client, pool = arq_pool
    job = await client.enqueue_job("add", 2, 3, _job_id=f"{pool}-add")
    assert job is not None
    assert await job.result(timeout=5, poll_delay=0.05) == 5
    info = await job.result_info()
    assert info is not None and info.success and info.job_try == 1
    assert (info.function, tuple(info.args), info.queue_name) == ("add", (2, 3), keys.queue(pool))
    assert await job.status() == JobStatus.complete
    # arq's dedupe still holds: the id has a kept result, so the same id is not enqueued again.
    assert await client.enqueue_job("add", 1, 1, _job_id=f"{pool}-add") is None


async def test_retries_count_tries_as_arq_does(arq_pool: tuple[ArqRedis, str]) -> None:
    client, pool = arq_pool
    tag = uuid.uuid4().hex
    job = await client.enqueue_job("flaky", tag, _job_id=f"{pool}-flaky")
    assert job is not None
    assert await job.result(timeout=5, poll_delay=0.05) == {"tries": 3, "runs": 3}
    info = await job.result_info()
    assert info is not None and info.job_try == 3
    assert await client.get(keys.retry_key_prefix + job.job_id) is None  # cleaned up on finish


async def test_a_failure_and_a_timeout_are_arq_results(arq_pool: tuple[ArqRedis, str]) -> None:
    client, pool = arq_pool
    failed = await client.enqueue_job("boom", _job_id=f"{pool}-boom")
    timed = await client.enqueue_job("slow", _job_id=f"{pool}-slow")
    assert failed is not None and timed is not None
    # jobs/serialize.py keeps an exception as its message: arq raises it as a SerializationError.
    with pytest.raises(Exception, match="provider said no"):
        await failed.result(timeout=5, poll_delay=0.05)
    with pytest.raises(Exception):  # noqa: B017 - arq's "job timed out" is an empty TimeoutError
        await timed.result(timeout=5, poll_delay=0.05)
    for job in (failed, timed):
        info = await job.result_info()
        assert info is not None and not info.success and info.job_try == 1


async def test_an_unknown_function_and_an_aborted_job(arq_pool: tuple[ArqRedis, str]) -> None:
    client, pool = arq_pool
    missing = await client.enqueue_job("nope", _job_id=f"{pool}-nope")
    assert missing is not None
    with pytest.raises(Exception, match="function 'nope' not found"):
        await missing.result(timeout=5, poll_delay=0.05)
    # What arq's Job.abort() does; its wait for the outcome needs pickle, which the pools do not use.
    running = await client.enqueue_job("slow_long", _job_id=f"{pool}-abort")
    assert running is not None
    await asyncio.sleep(0.15)
    await client.zadd(abort_jobs_ss, {running.job_id: timestamp_ms()})
    job = Job(running.job_id, client, _queue_name=keys.queue(pool), _deserializer=loads)
    for _ in range(100):
        if await job.status() == JobStatus.complete:
            break
        await asyncio.sleep(0.05)
    info = await job.result_info()
    assert info is not None and not info.success and info.finish_time < info.start_time + timedelta(seconds=2)
