"""Reading tasks back: /tasks, /tasks/{id}, /prediction-status."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import StatusDocument, TaskDeleted, TaskDetail, TaskList
from ingress.api_requests import JOB_ID, TASK_ID, JobQuery, TaskPath, TasksQuery, UidQuery
from ingress.api_spec import READ, api
from ingress.params import int_param, text_param
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import BadRequest, Conflict, NotFound
from jobs.names import KINDS
from jobs.results import PUBLIC_STATUS, TaskResult
from jobs.settings import to_dollars
from storage.status import status_document
from storage.tasks import TaskRepository


def _cost(row: asyncpg.Record) -> float:
    return 0.0 if row["refunded"] else to_dollars(row["cost_micros"])


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "job_id": row["job_id"], "model": row["model"], "prompt": row["prompt"],
            "status": PUBLIC_STATUS[row["status"]], "cost": _cost(row),
            "created_at": row["created_at"].isoformat().replace("+00:00", "Z")}


@api("Task history, newest first", tags=("tasks",), auth="bearer", query=TasksQuery, ok={200: TaskList},
     errors=READ)
async def list_tasks(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    page = int_param(request, "page", 1, 1, 1_000_000)
    size = int_param(request, "size", 10, 1, 100)
    kind, statuses = _filters(request)
    rows, total = await TaskRepository(st.db).page(who.uid, size, (page - 1) * size, kind, statuses)
    return JSON({"tasks": [{**_summary(r), "kind": r["kind"]} for r in rows], "page": page, "size": size,
                 "total": total})


def _filters(request: Request) -> tuple[str | None, list[str] | None]:
    """?kind= and ?status= (public statuses: in_progress, completed, failed, canceled)."""
    kind = request.query_params.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise BadRequest(f"Invalid kind: expected one of {', '.join(sorted(KINDS))}")
    status = request.query_params.get("status") or None
    if status is None:
        return kind, None
    statuses = [k for k, v in PUBLIC_STATUS.items() if v == status]
    if not statuses:
        raise BadRequest(f"Invalid status: expected one of {', '.join(sorted(set(PUBLIC_STATUS.values())))}")
    return kind, statuses


_TASK_ID = re.compile(TASK_ID)
_JOB_ID = re.compile(JOB_ID)


async def owned_task(request: Request, uid: str) -> asyncpg.Record:
    """The caller's task named in the path by its id or by its job_id: /generate, /face-swap/run,
    /moderate and the reference's chat routes answer with the job_id alone, so a task that only
    took its id could not be read, canceled or deleted with what its caller was given."""
    raw = request.path_params["id"]
    repo = TaskRepository(state(request).db)
    row = None
    if isinstance(raw, str) and _TASK_ID.fullmatch(raw):
        row = await repo.get(uid, int(raw))
    elif isinstance(raw, str) and _JOB_ID.fullmatch(raw):
        row = await repo.by_job_id(raw)
    if row is None or row["uid"] != uid or row["deleted_at"] is not None:
        raise NotFound("Task not found")
    return row


@api("One task", tags=("tasks",), auth="bearer", path=TaskPath, query=UidQuery, ok={200: TaskDetail},
     errors=READ)
async def get_task(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    row = await owned_task(request, who.uid)
    return JSON({**_summary(row), "kind": row["kind"], "output": row["output"], "error": row["error"],
                 "refunded": row["refunded"], "request": row["request"],
                 "updated_at": row["updated_at"].isoformat().replace("+00:00", "Z")})


@api("Delete a finished task from the history", tags=("tasks",), auth="bearer", path=TaskPath, query=UidQuery,
     ok={200: TaskDeleted}, errors=(*READ, 409))
async def delete_task(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    task_id = (await owned_task(request, who.uid))["id"]
    status = await TaskRepository(st.db).soft_delete(who.uid, task_id)
    if status is None:
        raise NotFound("Task not found")
    if status not in ("completed", "failed", "canceled"):
        raise Conflict("Task is still in progress: cancel it or wait for it to finish before deleting")
    return JSON({"deleted": True, "id": task_id})


@api("Status and output of a task (also the body of its completion webhooks)", tags=("tasks",), auth="bearer",
     query=JobQuery, ok={200: StatusDocument}, errors=READ)
async def prediction_status(request: Request) -> Response:
    st = state(request)
    job_id = text_param(request, "job_id")
    if not job_id:
        raise BadRequest("Missing job_id parameter")
    who = await st.auth.principal(request, request.query_params.get("uid"), public=True)
    cur = await st.status.read(job_id)
    if cur is not None and cur.get("uid") == who.uid:
        status, output, error = cur["status"], cur["output"], cur.get("error") or None
    else:
        # Expired from Redis (or never seeded): Postgres is the durable record.
        row = await TaskRepository(st.db).by_job_id(job_id)
        if row is None or row["uid"] != who.uid or row["deleted_at"] is not None:
            raise NotFound("No such job_id for this account")
        r = TaskResult.from_row(row)
        status, output, error = r.status, r.output, r.error
    return JSON(status_document(job_id, status, output, error))
