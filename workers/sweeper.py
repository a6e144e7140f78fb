"""The sweeper: no committed task is left behind by a crash.

Every pool runs it every few seconds (an arq cron job, unique across the pool's workers) over
its own unfinished tasks older than ``sweep_after_seconds``:

* arq still holds the job (queued or running): nothing to do;
* arq holds only a result (it gave up: tries exhausted, job expired): fail and refund;
* arq has no trace of it (the ingress died between commit and enqueue, or Redis lost it):
  enqueue it again, under the same job id.

The media pool also restarts the poll chain of running predictions that lost it
(``workers.poll.sweep_predictions``).
"""

from __future__ import annotations

import logging
from typing import Any

from jobs.names import KINDS
from jobs.queue import Job
from storage.status import StatusStore
from storage.tasks import TaskRepository
from workers.context import wctx
from workers.poll import sweep_predictions
from workers.runner import finish_failed

log = logging.getLogger("syncnode.sweeper")


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    w = wctx(ctx)
    rows = await TaskRepository(w.db).stale(w.pool_name, w.settings.sweep_after_seconds, 500)
    counts = {"requeued": 0, "failed": 0}
    for r in rows:
        kind = KINDS.get(r["kind"])
        if kind is None or r["status"] != "queued":
            continue
        state = await w.queue.state(r["job_id"])
        if state == "active":
            continue
        if state == "finished":
            await finish_failed(w, r["job_id"], "The task could not be run: the worker gave up on it")
            counts["failed"] += 1
            continue
        job = Job(kind.pool, kind.function, r["job_id"], (r["job_id"],),
                  status=StatusStore.initial(r["uid"], r["id"], kind.name))
        if await w.queue.enqueue(job):
            log.warning("re-enqueued task %s that was committed but not queued", r["job_id"])
            counts["requeued"] += 1
    if w.pool_name == "media":
        counts["polls_restarted"] = await sweep_predictions(w)
    return counts
