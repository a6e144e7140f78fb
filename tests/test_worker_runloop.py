"""The worker runs jobs itself once its claim has read them (``workers/runtime/runloop.py``), yet the
queue stays arq's: a plain arq client, or our own enqueue, puts jobs in a pool, and arq's own
``Job.info()`` / ``Job.result()`` read back what ran, how often, and how it ended.

``workers/runtime`` overrides private methods of arq 0.28.0 and calls others; the first tests
pin that seam, so an arq upgrade fails here, by name, before it fails in production."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import arq
import pytest
from arq import Retry, func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import abort_jobs_ss
from arq.jobs import Job, JobResult, JobStatus
from arq.utils import timestamp_ms
from arq.worker import Worker

from jobs import keys
from jobs.queue import Job as QueuedJob
from jobs.queue import JobQueue
from jobs.serialize import dumps, loads
from workers.runtime.worker import SyncNodeWorker

# Every arq callable workers/runtime overrides or calls, with its parameters as arq 0.28.0 has them.
ARQ_SIGNATURES = {
    "Worker.__init__": "(self, functions=(), *, queue_name='arq:queue', cron_jobs=None, redis_settings=None, "
                       "redis_pool=None, burst=False, on_startup=None, on_shutdown=None, on_job_start=None, "
                       "on_job_end=None, after_job_end=None, handle_signals=True, job_completion_wait=0, "
                       "max_jobs=10, job_timeout=300, keep_result=3600, keep_result_forever=False, poll_delay=0.5, "
                       "queue_read_limit=None, max_tries=5, health_check_interval=3600, health_check_key=None, "
                       "ctx=None, retry_jobs=True, allow_abort_jobs=False, max_burst_jobs=-1, job_serializer=None, "
                       "job_deserializer=None, expires_extra_ms=86400000, timezone=None, log_results=True)",
    "Worker._poll_iteration": "(self)",
    "Worker.finish_job": "(self, job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, "
                         "keep_in_progress)",
    "Worker.finish_failed_job": "(self, job_id, result_data)",
    "Worker.record_health": "(self)",
    "Worker._release_sem_dec_counter_on_complete": "(self)",
    "Worker.main": "(self)",
    "Worker.handle_sig": "(self, signum)",
    "Worker.close": "(self)",
    "Worker.heart_beat": "(self)",
    "Worker._cancel_aborted_jobs": "(self)",
    "Worker._jobs_started": "(self)",
    "Worker.run": "(self)",
    "jobs.serialize_job": "(function_name, args, kwargs, job_try, enqueue_time_ms, *, serializer=None)",
    "jobs.serialize_result": "(function, args, kwargs, job_try, enqueue_time_ms, success, result, start_ms, "
                             "finished_ms, ref, queue_name, job_id, *, serializer=None)",
    "jobs.deserialize_job_raw": "(r, *, deserializer=None)",
    "utils.args_to_string": "(args, kwargs)",
    "utils.ms_to_datetime": "(unix_ms)",
    "utils.timestamp_ms": "()",
    "utils.to_ms": "(td)",
    "connections.create_pool": "(settings_=None, *, retry=0, job_serializer=None, job_deserializer=None, "
                               "default_queue_name='arq:queue', expires_extra_ms=86400000)",
    "connections.log_redis_info": "(redis, log_func)",
    "worker.get_kwargs": "(settings_cls)",
}
# arq's Worker methods whose bodies workers/runtime rewrote rather than extended (no super()):
# the first 16 hex digits of the sha256 of their source. When one changes, read ours against it.
ARQ_REWRITTEN = {
    "_poll_iteration": "f8d39d823a0a59f2",  # worker.py _poll_iteration + _claim_jobs
    "start_jobs": "b45797cfa40bed7f",  # the claim script (_CLAIM_LUA)
    "run_job": "589a19059ff84ee7",  # runloop.py run_claimed
    "finish_job": "903f09c92830d3fd",  # worker.py _finish_batch
    "main": "45ca1591c9717466",  # worker.py main
}
# Worker attributes (set in arq's __init__) that workers/runtime reads or writes.
ARQ_ATTRIBUTES = (
    "_handle_signals", "_last_health_check", "_pool", "aborting_tasks", "allow_abort_jobs", "allow_pick_jobs",
    "burst", "ctx", "expires_extra_ms", "functions", "health_check_interval", "in_progress_timeout_s",
    "job_counter", "job_deserializer", "job_serializer", "job_tasks", "job_timeout_s", "jobs_complete",
    "jobs_failed", "jobs_retried", "keep_result_forever", "keep_result_s", "loop", "main_task", "max_burst_jobs",
    "max_jobs", "max_tries", "on_job_end", "on_job_start", "on_startup", "on_stop", "poll_delay_s", "queue_name",
    "queue_read_limit", "redis_settings", "retry_jobs", "sem", "tasks",
)
# What the claim script and the lease write under arq's names (jobs/keys.py imports arq's).
ARQ_CONSTANTS = {
    "in_progress_key_prefix": "arq:in-progress:", "job_key_prefix": "arq:job:", "result_key_prefix": "arq:result:",
    "retry_key_prefix": "arq:retry:", "abort_jobs_ss": "arq:abort", "keep_cronjob_progress": 60,
}

runs: dict[str, int] = {}


def _bare_signature(f: Any) -> str:
    sig = inspect.signature(f)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _arq_callable(name: str) -> Any:
    owner, _, attr = name.partition(".")
    return getattr(Worker if owner == "Worker" else getattr(arq, owner), attr)


def test_the_arq_version_is_the_one_workers_runtime_was_written_against() -> None:
    assert arq.VERSION == "0.28.0", "workers/runtime overrides arq internals: re-check them, then these pins"


def test_the_arq_internals_we_override_or_call_keep_their_signatures() -> None:
    changed = {name: _bare_signature(_arq_callable(name)) for name in ARQ_SIGNATURES}
    assert changed == ARQ_SIGNATURES


def test_the_arq_methods_we_rewrote_are_unchanged() -> None:
    seen = {name: hashlib.sha256(inspect.getsource(getattr(Worker, name)).encode()).hexdigest()[:16]
            for name in ARQ_REWRITTEN}
    assert seen == ARQ_REWRITTEN


async def test_the_arq_worker_state_we_touch_still_exists() -> None:
    w = Worker(functions=[func(add, name="add")], handle_signals=False)
    assert [a for a in ARQ_ATTRIBUTES if not hasattr(w, a)] == []
    assert {name: getattr(arq.constants, name) for name in ARQ_CONSTANTS} == ARQ_CONSTANTS
    assert {f.name for f in dataclasses.fields(arq.worker.Function)} >= {
        "coroutine", "timeout_s", "keep_result_s", "keep_result_forever", "max_tries"}


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
                                  func(slow, name="slow_long", timeout=30),
                                  func(once_then_later, name="once_then_later", max_tries=3)],
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


async def test_a_job_our_queue_enqueued_reads_back_with_arq_s_own_job(arq_pool: tuple[ArqRedis, str]) -> None:
    client, pool = arq_pool
    queue = JobQueue(client, status_ttl_seconds=60)
    job_id = f"{pool}-ours"
    assert await queue.enqueue(QueuedJob(pool, "add", job_id, (4, 5), defer_ms=400))
    job = Job(job_id, client, _queue_name=keys.queue(pool), _deserializer=loads)
    queued = await job.info()  # before it runs: arq reads our payload as its own job definition
    assert queued is not None and not isinstance(queued, JobResult)
    assert (queued.function, tuple(queued.args), queued.kwargs) == ("add", (4, 5), {})
    job_try: int | None = queued.job_try  # arq annotates an int; a job not yet run has none
    assert job_try is None
    assert queued.score is not None and queued.score > timestamp_ms()
    assert await job.status() == JobStatus.deferred
    assert await job.result(timeout=5, poll_delay=0.05) == 9
    done = await job.info()
    assert isinstance(done, JobResult) and done.success and done.job_try == 1 and done.result == 9
    assert (done.function, tuple(done.args), done.queue_name) == ("add", (4, 5), keys.queue(pool))
    # arq's dedupe holds for our enqueue too: the id has a kept result.
    assert await queue.enqueue(QueuedJob(pool, "add", job_id, (1, 1))) is False


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


async def once_then_later(ctx: dict[str, Any], tag: str) -> str:
    runs[tag] = runs.get(tag, 0) + 1
    if ctx["job_try"] == 1:
        raise Retry(defer=30)
    return "done"


async def test_a_finish_leaves_the_keys_arq_s_finish_leaves(arq_pool: tuple[ArqRedis, str]) -> None:
    """The finish script (workers/runtime/scripts.py) against arq's finish_job, key by key: a
    finished job keeps only its result (for keep_result), a retried one stays queued later on
    with its lock released and its payload kept."""
    client, pool = arq_pool
    job = await client.enqueue_job("add", 1, 2, _job_id=f"{pool}-keys")
    assert job is not None and await job.result(timeout=5, poll_delay=0.05) == 3
    jid = job.job_id
    assert 55_000 < await client.pttl(keys.result_key_prefix + jid) <= 60_000  # keep_result=60
    for gone in (keys.job_key_prefix, keys.retry_key_prefix, keys.in_progress_key_prefix):
        assert await client.exists(gone + jid) == 0, gone
    assert await client.zscore(keys.queue(pool), jid) is None

    tag = uuid.uuid4().hex
    later = await client.enqueue_job("once_then_later", tag, _job_id=f"{pool}-later")
    assert later is not None
    before = await client.zscore(keys.queue(pool), later.job_id)
    for _ in range(100):
        if runs.get(tag) == 1 and not await client.exists(keys.in_progress_key_prefix + later.job_id):
            break
        await asyncio.sleep(0.05)
    assert runs[tag] == 1
    assert await client.exists(keys.in_progress_key_prefix + later.job_id) == 0  # released, not leased on
    assert await client.exists(keys.job_key_prefix + later.job_id) == 1
    assert await client.exists(keys.result_key_prefix + later.job_id) == 0
    after = await client.zscore(keys.queue(pool), later.job_id)
    assert before is not None and after is not None and after >= before + 30_000  # Retry(defer=30)
