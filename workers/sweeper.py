"""The sweeper: no committed task is left behind by a crash.

Every pool runs it every few seconds (an arq cron job, unique across the pool's workers) over
its own unfinished tasks older than ``sweep_after_seconds``:

* arq still holds the job (queued or running): nothing to do;
* arq holds only a result (it gave up: tries exhausted, job expired): fail and refund, except a
  media create that had started its POST (arq's timeout cut it short): a prediction may exist
  and may be running, so the job runs again (a few times at most) and adopts it;
* arq has no trace of it (the ingress died between commit and enqueue, or Redis lost it):
  enqueue it again, under the same job id.

The media pool also restarts the poll chain of running predictions that lost it
(``workers.poll.sweep_predictions``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from jobs import keys
from jobs.names import KINDS
from jobs.queue import Job
from storage.deadletters import DeadLetters, arq_failure, record
from storage.predictions import PredictionRepository
from storage.status import StatusStore
from storage.tasks import TaskRepository
from workers.context import WorkerContext, wctx
from workers.poll import sweep_predictions
from workers.runner import finish_failed

log = logging.getLogger("syncnode.sweeper")

# A create that keeps timing out is a bug or an outage: after this many re-runs it is refunded.
_MAX_CREATE_RERUNS = 3


async def _rerun_started_create(w: WorkerContext, job_id: str, job: Job) -> bool:
    """Run a media create again when arq gave up after its POST may have gone out."""
    if w.pool_name != "media":
        return False
    st = await PredictionRepository(w.db).state(job_id, with_request=False)
    if st is None or st["create_started_at"] is None or st["provider_id"] is not None:
        return False
    n = await w.redis.incr(keys.create_reruns(job_id))
    await w.redis.expire(keys.create_reruns(job_id), 86_400)
    if n > _MAX_CREATE_RERUNS:
        return False
    # Same job id, so the sweeper keeps tracking it: arq's result is what would block the enqueue.
    await w.redis.delete(keys.result_key_prefix + job_id)
    if not await w.queue.enqueue(job):
        return False
    log.warning("re-running create %s: arq gave up after its create request (rerun %d)", job_id, n)
    return True


_PAGE = 500
# One sweep stops after this long; the next one, seconds later, starts from the oldest again.
_BUDGET_S = 20.0


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    w = wctx(ctx)
    counts = {"requeued": 0, "failed": 0}
    after = None
    deadline = time.monotonic() + _BUDGET_S
    while time.monotonic() < deadline:
        rows = await TaskRepository(w.db).stale(w.pool_name, w.settings.sweep_after_seconds, _PAGE, after)
        if not rows:
            break
        await _sweep_page(w, rows, counts)
        after = (rows[-1]["created_at"], rows[-1]["id"])
        if len(rows) < _PAGE:
            break
    if w.pool_name == "media":
        counts["polls_restarted"] = await sweep_predictions(w)
    return counts


async def _bury(w: WorkerContext, row: Any, pool: str) -> None:
    """Fail and refund a task arq gave up on (tries exhausted, run abandoned at its timeout, job
    expired), and leave its dead letter: what arq last said of it, and why its last try failed."""
    job_id = row["job_id"]
    async with w.redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.result_key_prefix + job_id)
        pipe.get(keys.last_error(job_id))
        arq_result, last_error = await pipe.execute()
    function, tries, arq_error = arq_failure(arq_result)
    error = "; ".join(e for e in ((last_error or b"").decode("utf-8", "replace"), arq_error or "") if e)
    if await finish_failed(w, job_id, "The task could not be run: the worker gave up on it"):
        rec = record(job_id, pool, function=function, tries=tries, task_id=row["id"], uid=row["uid"],
                     error=error or "arq gave up on the job without an error")
        await DeadLetters(w.redis, w.settings.dead_letter_max, w.settings.dead_letter_ttl_seconds).add(pool, rec)
        log.warning("job %s is dead (%s, %s tries): %s; its task was refunded", job_id, function, tries, rec["error"])


async def _sweep_page(w: WorkerContext, rows: list[Any], counts: dict[str, int]) -> None:
    states = await w.queue.states([r["job_id"] for r in rows])
    for r, state in zip(rows, states, strict=True):
        kind = KINDS.get(r["kind"])
        if kind is None or state == "active":
            continue
        job = Job(kind.pool, kind.function, r["job_id"], (r["job_id"],),
                  status=StatusStore.initial(r["uid"], r["id"], kind.name))
        if state == "finished":
            if await _rerun_started_create(w, r["job_id"], job):
                counts["requeued"] += 1
                continue
            await _bury(w, r, kind.pool)
            counts["failed"] += 1
            continue
        if await w.queue.enqueue(job):
            log.warning("re-enqueued task %s that was committed but not queued", r["job_id"])
            counts["requeued"] += 1
