"""POST /tasks/{id}/cancel.

A queued task is taken off its queue and refunded here. A running prediction is handed to
the poll pool (``media.cancel``), which cancels it at Replicate and then marks the task
canceled and refunds it; this answers once that happened, or 202 if it takes longer.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import TaskCanceled
from ingress.api_requests import TaskPath, UidQuery
from ingress.api_spec import READ, api
from ingress.responses import JSON
from ingress.state import AppState, state
from ingress.tasks import owned_task
from jobs.errors import Conflict
from jobs.names import MEDIA_CANCEL, MEDIA_KINDS
from jobs.queue import Job
from jobs.results import PUBLIC_STATUS, TaskResult
from storage.predictions import PredictionRepository
from storage.tasks import TERMINAL, TaskRepository

_WAIT_S = 5.0


async def _cancel_queued(st: AppState, job_id: str, pool: str) -> bool:
    if not await st.queue.remove(pool, job_id):
        return False
    row = await TaskRepository(st.db).finish_unpaid(job_id, "canceled", "Canceled by the user")
    if row is not None:
        await st.status.publish(job_id, TaskResult.finished(row, "canceled", error="Canceled by the user",
                                                            refunded=True))
    return True


@api("Cancel a queued or running task; refunded", tags=("tasks",), auth="bearer", path=TaskPath, query=UidQuery,
     ok={200: TaskCanceled, 202: TaskCanceled}, errors=(*READ, 409))
async def cancel_task(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    repo = TaskRepository(st.db)
    row = await owned_task(request, who.uid)
    job_id = row["job_id"]
    if row["status"] not in TERMINAL:
        if row["status"] == "queued" and await _cancel_queued(st, job_id, row["pool"]):
            pass
        elif row["kind"] in MEDIA_KINDS:
            await PredictionRepository(st.db).request_cancel(job_id)
            await st.queue.enqueue(Job("poll", MEDIA_CANCEL, f"{job_id}:cancel", (job_id,)))
        else:
            raise Conflict("This task is already running and cannot be canceled; it will finish shortly")
    deadline = time.monotonic() + _WAIT_S
    while True:
        now = await repo.by_job_id(job_id)
        assert now is not None
        row = now
        if row["status"] in TERMINAL or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    done = row["status"] in TERMINAL
    return JSON({"id": row["id"], "job_id": job_id, "status": PUBLIC_STATUS[row["status"]],
                 "refunded": row["refunded"]}, status_code=200 if done else 202)
