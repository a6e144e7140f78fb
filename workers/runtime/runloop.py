"""arq's ``Worker.run_job`` for a job the claim script already read.

arq opens every job with a MULTI/EXEC of its own (GET the job, INCR and EXPIRE its try counter,
ZREM it from the abort set): one more round trip per job, after the claim. The claim script
(``workers/runtime/worker.py``) does those same commands atomically while it takes the job and hands over
what they returned, so a job starts without another look at Redis. What follows is arq's
run_job from there on, with the same results, retries, aborts, timeouts and keys, minus the
per-job log formatting nobody reads at this volume (it is built only when INFO is on), and
minus arq's second task per job: the job's coroutine runs in this one (registered in
``job_tasks`` for aborts as arq's is), so a claimed job reaches its first request without
another turn of the event loop, and cancelling, timing out or aborting it reaches the same
``await`` as before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arq.constants import keep_cronjob_progress, retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms
from arq.worker import JobExecutionFailed, Retry, RetryJob, no_result

if TYPE_CHECKING:
    from arq.worker import Worker

log = logging.getLogger("arq.worker")


@dataclass(frozen=True, slots=True)
class Claimed:
    """One job as the claim script took it: what arq's run_job would read first."""

    job_id: str
    score: int
    payload: bytes | None
    job_try: int
    aborted: bool


def parse_claimed(raw: list[Any], with_abort: bool) -> list[Claimed]:
    """The claim script's groups of five (id, score, payload, try, was-in-abort-set)."""
    return [Claimed(raw[i].decode(), int(float(raw[i + 1])), raw[i + 2] or None, int(raw[i + 3]),
                    with_abort and bool(int(raw[i + 4])))
            for i in range(0, len(raw), 5)]


async def run_claimed(w: Worker, c: Claimed) -> None:  # noqa: C901 - arq's run_job, one flow
    start_ms = timestamp_ms()
    job_id, job_try = c.job_id, c.job_try
    function_name, enqueue_time_ms = "<unknown>", 0
    args: tuple[Any, ...] = ()
    kwargs: dict[Any, Any] = {}

    async def job_failed(exc: BaseException) -> None:
        w.jobs_failed += 1
        data = serialize_result(function_name, args, kwargs, job_try, enqueue_time_ms, False, exc, start_ms,
                                timestamp_ms(), f"{job_id}:{function_name}", w.queue_name, job_id=job_id,
                                serializer=w.job_serializer)
        await asyncio.shield(w.finish_failed_job(job_id, data))

    if not c.payload:
        log.warning("job %s expired", job_id)
        return await job_failed(JobExecutionFailed("job expired"))
    try:
        function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
            c.payload, deserializer=w.job_deserializer)
    except SerializationError as e:
        log.exception("deserializing job %s failed", job_id)
        return await job_failed(e)
    if c.aborted:
        log.info("%s aborted before start", job_id)
        return await job_failed(asyncio.CancelledError())
    function = w.functions.get(function_name)
    if function is None:
        log.warning("job %s, function %r not found", job_id, function_name)
        return await job_failed(JobExecutionFailed(f"function {function_name!r} not found"))
    cron = hasattr(function, "next_run")
    ref = function_name if cron else f"{job_id}:{function_name}"
    keep_in_progress = keep_cronjob_progress if cron else None
    if enqueue_job_try and enqueue_job_try > job_try:
        job_try = enqueue_job_try
        await w.pool.setex(retry_key_prefix + job_id, 88400, str(job_try))
    max_tries = w.max_tries if function.max_tries is None else function.max_tries
    if job_try > max_tries:
        log.warning("%s max retries %d exceeded", ref, max_tries)
        return await job_failed(JobExecutionFailed(f"max {max_tries} retries exceeded"))

    ctx = {**w.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueue_time_ms),
           "score": c.score}
    if w.on_job_start:
        await w.on_job_start(ctx)
    timeout_s = w.job_timeout_s if function.timeout_s is None else function.timeout_s
    result, finish, success, incr_score = no_result, False, False, None
    start_ms = timestamp_ms()
    if log.isEnabledFor(logging.INFO):
        log.info("%6.2fs → %s(%s) try=%d", (start_ms - enqueue_time_ms) / 1000, ref,
                 args_to_string(args, kwargs), job_try)
    me = asyncio.current_task()
    assert me is not None
    w.job_tasks[job_id] = me
    try:
        async with asyncio.timeout(timeout_s):
            result = await function.coroutine(ctx, *args, **kwargs)
    except (Exception, asyncio.CancelledError) as e:
        if w.retry_jobs and isinstance(e, Retry):
            incr_score = e.defer_score
            if e.defer_score:
                incr_score = e.defer_score + (timestamp_ms() - c.score)
            w.jobs_retried += 1
        elif job_id in w.aborting_tasks and isinstance(e, asyncio.CancelledError):
            result, finish = e, True
            w.aborting_tasks.remove(job_id)
            w.jobs_failed += 1
        elif w.retry_jobs and isinstance(e, asyncio.CancelledError | RetryJob):
            w.jobs_retried += 1
        else:
            log.exception("%s failed, %s: %s", ref, e.__class__.__name__, e)
            result, finish = e, True
            w.jobs_failed += 1
    else:
        success = finish = True
        w.jobs_complete += 1
    finally:
        del w.job_tasks[job_id]
    finished_ms = timestamp_ms()

    forever = w.keep_result_forever if function.keep_result_forever is None else function.keep_result_forever
    result_timeout_s = w.keep_result_s if function.keep_result_s is None else function.keep_result_s
    data = None
    if result is not no_result and (forever or result_timeout_s > 0):
        data = serialize_result(function_name, args, kwargs, job_try, enqueue_time_ms, success, result, start_ms,
                                finished_ms, ref, w.queue_name, job_id=job_id, serializer=w.job_serializer)
    if w.on_job_end:
        await w.on_job_end(ctx)
    await asyncio.shield(w.finish_job(job_id, finish, data, result_timeout_s, forever, incr_score,
                                      keep_in_progress))
