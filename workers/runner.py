"""How every task job runs: idempotent, never raising, finishing the task exactly once.

arq runs a job at least once (a killed worker's job runs again), so each run first reads the
task: a task already finished is only re-announced; otherwise the work runs and the task is
finished by a conditional UPDATE, so only one run can complete or refund it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs import keys
from jobs.logs import UID
from jobs.results import TaskResult, Upstream
from storage.tasks import TERMINAL, TaskRepository
from workers.context import WorkerContext
from workers.output import OutputRefused, normalize_output
from workers.providers.errors import ProviderError, ProviderRejected, ProviderRetryable, ProviderStreamBroken

log = logging.getLogger("syncnode.worker")

# OperatorInterventionError: "terminating connection due to administrator command", what every
# query in flight gets when Postgres shuts down for a restart.
_UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                asyncpg.exceptions.OperatorInterventionError, RedisConnectionError, ConnectionError)


def infrastructure(e: BaseException) -> bool:
    """Our own Postgres or Redis unreachable: not the task's fault, and worth another try later.
    asyncpg's client-side DataError (an argument it cannot encode) is an InterfaceError like a
    closed connection, but also a ValueError: the statement's fault, which no retry cures."""
    return isinstance(e, _UNREACHABLE) and not isinstance(e, ValueError)


Work = Callable[[WorkerContext, asyncpg.Record, str | None], Awaitable[Any]]


async def finish_failed(w: WorkerContext, job_id: str, error: str, *, status: str = "failed",
                        client_error: bool = False, upstream: Upstream | None = None) -> bool:
    """Fail (or cancel) and refund once; announce whatever the final state turned out to be.
    True if this call was the one that failed it."""
    row = await TaskRepository(w.db).finish_unpaid(job_id, status, error, client_error=client_error,
                                                    upstream=upstream)
    if row is not None:
        await w.status.publish(job_id, TaskResult.finished(row, status, error=error, refunded=True,
                                                           client_error=client_error, upstream=upstream))
        return True
    await announce(w, job_id)
    return False


async def provider_failed(w: WorkerContext, job_id: str, e: ProviderError) -> str:
    """A provider's 4xx fails the task with its own message (the caller's fault: 400); anything
    else reached here after every retry (502). Either way the charge is refunded."""
    upstream = Upstream(e.status, e.retry_after if isinstance(e, ProviderRetryable) else None, e.code, e.param)
    if isinstance(e, ProviderStreamBroken):
        await _stream_broken(w, job_id, e)
    elif isinstance(e, ProviderRejected):
        await finish_failed(w, job_id, str(e), client_error=True, upstream=upstream)
    else:
        await finish_failed(w, job_id, f"{e} (gave up after retries)", upstream=upstream)
    return "failed"


async def _stream_broken(w: WorkerContext, job_id: str, e: ProviderStreamBroken) -> None:
    if e.refund:
        await finish_failed(w, job_id, str(e))
        return
    try:
        output = normalize_output(e.output, w.settings.output_max_depth)
    except OutputRefused:
        output = None
    row = await TaskRepository(w.db).fail_charged(job_id, str(e), output)
    if row is not None:
        await w.status.publish(job_id, TaskResult.finished(row, "failed", output=output, error=str(e)))
    else:
        await announce(w, job_id)


async def announce(w: WorkerContext, job_id: str) -> None:
    """Re-publish a finished task (a re-run job, or a crash between Postgres and Redis)."""
    row = await TaskRepository(w.db).by_job_id(job_id)
    if row is not None and row["status"] in TERMINAL:
        await w.status.publish(job_id, TaskResult.from_row(row))


async def run_task(w: WorkerContext, function: str, job_id: str, key_name: str | None,
                   work: Work) -> dict[str, Any]:
    start = time.perf_counter()
    outcome = "failed"
    try:
        outcome = await _run(w, job_id, key_name, work)
        return {"outcome": outcome}
    except Exception as e:
        if not infrastructure(e):
            raise
        # arq runs the job again (up to max_tries; then the sweeper refunds it) instead of
        # failing it for good now.
        outcome = "retried"
        log.warning("job %s: %s: %s; retrying", job_id, type(e).__name__, e)
        await _remember_error(w, job_id, e)
        raise Retry(defer=2) from e
    except asyncio.CancelledError:
        outcome = "interrupted"  # worker shutting down: arq puts the job back on the queue
        raise
    finally:
        w.metrics.job(w.pool_name, function, outcome, time.perf_counter() - start)


async def _remember_error(w: WorkerContext, job_id: str, e: BaseException) -> None:
    """Why this try is retried, for the dead letter should it be the last (arq keeps only "max
    retries exceeded"). Best effort: Redis may be what failed."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1):
            await w.redis.set(keys.last_error(job_id), f"{type(e).__name__}: {e}"[:1000], ex=86_400)


async def _run(w: WorkerContext, job_id: str, key_name: str | None, work: Work) -> str:
    row = await w.tasks.for_worker(job_id, key_name)
    if row is None:
        log.warning("job %s has no task row; dropped", job_id)
        return "missing"
    UID.set(row["uid"])  # this job's log lines name the account (workers/tracing.py resets it)
    if row["status"] in TERMINAL:
        await announce(w, job_id)
        return "duplicate"
    key = None
    if key_name is not None:
        if row["ciphertext"] is None:
            await finish_failed(w, job_id, f"The {key_name} was removed before the task ran", client_error=True)
            return "failed"
        try:
            key = w.box.decrypt(row["ciphertext"])
        except ValueError as e:
            await finish_failed(w, job_id, f"The stored {key_name} cannot be used: {e}")
            return "failed"
    try:
        output = await work(w, row, key)
    except ProviderError as e:
        return await provider_failed(w, job_id, e)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("job %s crashed", job_id)
        await finish_failed(w, job_id, "Internal error while running the task")
        return "failed"
    try:  # before the batched completion: one unencodable output must not fail its neighbours
        output = normalize_output(output, w.settings.output_max_depth)
    except OutputRefused as e:
        await finish_failed(w, job_id, str(e))
        return "failed"
    done = await w.tasks.complete(job_id, output)
    if done is None:
        await announce(w, job_id)  # another run finished it first
        return "duplicate"
    await w.status.announce(job_id, TaskResult.finished(done, "completed", output=output))
    return "completed"
