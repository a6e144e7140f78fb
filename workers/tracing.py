"""Every job function runs inside ``traced``: its log lines carry its job id and the id of the
request that enqueued it, and it ends with one line saying how it went and how long it took."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.worker import Function

from jobs.logs import JOB_ID, REQUEST_ID, UID
from jobs.metrics import WorkerMetrics
from jobs.queue import REQUEST_ID_ARG

log = logging.getLogger("syncnode.job")

JobFn = Callable[..., Awaitable[Any]]


def _waited(ctx: dict[str, Any]) -> float | None:
    """Seconds the job waited on its queue since it became due (a deferred job waits from its
    due time; an urgent one, scored before its enqueue, from its enqueue)."""
    enqueued = ctx.get("enqueue_time")
    score = ctx.get("score")
    if enqueued is None or not isinstance(score, int | float):
        return None
    due = max(score / 1000, float(enqueued.timestamp()))
    return max(0.0, time.time() - due)


def traced(pool: str, f: Function) -> Function:
    inner: JobFn = f.coroutine

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        rid = kwargs.pop(REQUEST_ID_ARG, None)
        tokens = (REQUEST_ID.set(rid if isinstance(rid, str) else None), JOB_ID.set(ctx.get("job_id")),
                  UID.set(None))
        metrics = getattr(ctx.get("sn"), "metrics", None)
        waited = _waited(ctx)
        if isinstance(metrics, WorkerMetrics) and waited is not None:
            metrics.waited(pool, waited)
        start = time.perf_counter()
        outcome = "error"
        try:
            result = await inner(ctx, *args, **kwargs)
            outcome = str(result.get("outcome", "done")) if isinstance(result, dict) else "done"
            return result
        except Retry:
            outcome = "retry"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # shutdown or arq's timeout: arq decides what happens next
            raise
        finally:
            ms = round((time.perf_counter() - start) * 1000, 2)
            log.info("job %s %s in %.1f ms", f.name, outcome, ms,
                     extra={"function": f.name, "outcome": outcome, "duration_ms": ms, "tries": ctx.get("job_try")})
            for var, token in zip((REQUEST_ID, JOB_ID, UID), tokens, strict=True):
                var.reset(token)

    return dataclasses.replace(f, coroutine=run)
