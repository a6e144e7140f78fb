"""The spine of every paid call: charge (one SQL statement) → commit → enqueue → maybe wait.

Services never commit: the charge is a single autocommitted statement, and the job is
enqueued only after it returned, so a worker never sees a task Postgres does not have. A crash
between the two is healed by the sweeper (``workers/sweeper.py``), which enqueues tasks that
are committed but not queued.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError

from ingress.auth import Principal
from ingress.state import AppState
from jobs.errors import IdempotencyConflict, InsufficientBalance, MissingProviderKey, NotFound, Unavailable
from jobs.names import TaskKind
from jobs.queue import Job
from jobs.settings import to_dollars
from storage.status import PUBLIC_STATUS, StatusStore
from storage.tasks import TERMINAL, NewTask, TaskRepository

log = logging.getLogger("syncnode.ingress")


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: int
    job_id: str
    # The final result when the caller waited and it arrived in time.
    result: dict[str, Any] | None


def result_from_row(row: asyncpg.Record) -> dict[str, Any]:
    """The same shape a worker pushes on the done list, rebuilt from the durable row."""
    return {
        "status": PUBLIC_STATUS[row["status"]], "output": row["output"], "error": row["error"],
        "task_id": row["id"], "model": row["model"],
        "cost_micros": 0 if row["refunded"] else row["cost_micros"],
        "updated_at": row["updated_at"].isoformat(),
    }


async def submit(st: AppState, who: Principal, kind: TaskKind, *, model: str | None, prompt: str | None,
                 request: dict[str, Any], idempotency_key: str | None, wait: bool,
                 webhook: tuple[str, tuple[str, ...]] | None = None) -> Submitted:
    """``webhook``: a target ``ingress.hooks.webhook_target`` validated, or None."""
    repo = TaskRepository(st.db)
    request_hash = None
    if idempotency_key is not None:
        request_hash = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
                                      + kind.name.encode()
                                      + (orjson.dumps(webhook) if webhook else b"")).digest()
        prior = await repo.by_idempotency_key(who.uid, idempotency_key)
        if prior is not None:
            return await _replay(st, prior, request_hash, wait)

    price = kind.price_micros(st.settings)
    new = NewTask(job_id=str(uuid.uuid4()), uid=who.uid, kind=kind.name, pool=kind.pool, model=model,
                  prompt=prompt, request=request, cost_micros=price, key_name=kind.key_name,
                  idempotency_key=idempotency_key, request_hash=request_hash,
                  webhook=webhook[0] if webhook else None, webhook_events=webhook[1] if webhook else None)
    try:
        if idempotency_key is None and webhook is None:
            # Same account and same price per batch: the running sum then takes exactly the
            # requests that one-by-one charging would have taken.
            outcome = await st.charges.submit((who.uid, price), new)
        else:
            outcome = await repo.charge_and_create(new)
    except asyncpg.UniqueViolationError:
        # Another request with the same Idempotency-Key committed first: answer as its replay.
        prior = await repo.by_idempotency_key(who.uid, idempotency_key or "")
        assert prior is not None
        return await _replay(st, prior, request_hash, wait)
    if outcome.task_id is None:
        if not outcome.account_exists:
            raise NotFound("Unknown account")
        if not outcome.has_key:
            assert kind.key_name is not None
            raise MissingProviderKey(kind.key_name, kind.provider)
        raise InsufficientBalance(
            f"Insufficient balance: this call costs ${to_dollars(price):.2f}; "
            "top up (POST /topup_card) or save a card for auto-recharge"
        )

    job = Job(kind.pool, kind.function, new.job_id, (new.job_id,),
              status=StatusStore.initial(who.uid, outcome.task_id, kind.name))
    try:
        if wait:
            result = await st.queue.enqueue_and_wait(job, st.settings.sync_timeout_seconds)
        else:
            await st.queue.enqueue(job)
            result = None
    except RedisError:
        log.exception("enqueue of %s failed; the sweeper will enqueue it", new.job_id)
        raise Unavailable("The queue is unavailable; the task is recorded and will run when it recovers",
                          extra={"job_id": new.job_id})
    return Submitted(outcome.task_id, new.job_id, result)


async def _replay(st: AppState, prior: asyncpg.Record, request_hash: bytes | None,
                  wait: bool) -> Submitted:
    if prior["request_hash"] != request_hash:
        raise IdempotencyConflict()
    job_id = prior["job_id"]
    if prior["status"] in TERMINAL or not wait:
        return Submitted(prior["id"], job_id, result_from_row(prior) if prior["status"] in TERMINAL else None)
    # The first request owns the done list; a replay watches the status hash instead.
    deadline = time.monotonic() + st.settings.sync_timeout_seconds
    while time.monotonic() < deadline:
        cur = await st.status.read(job_id)
        if cur is not None and cur["status"] != "in_progress":
            row = await TaskRepository(st.db).by_job_id(job_id)
            assert row is not None
            return Submitted(prior["id"], job_id, result_from_row(row))
        await asyncio.sleep(0.05)
    return Submitted(prior["id"], job_id, None)
