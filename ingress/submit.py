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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError

from ingress.auth import Principal
from ingress.state import AppState
from jobs import keys
from jobs.errors import (
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientBalance,
    MissingProviderKey,
    NotFound,
    SyncNodeError,
    Unavailable,
)
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


def status_url(st: AppState, job_id: str) -> str:
    return f"{st.settings.public_url}/prediction-status?job_id={job_id}"


def refusal(kind: TaskKind, price: int, *, account_exists: bool, has_key: bool) -> SyncNodeError:
    """Why a charge of ``price`` for ``kind`` did not (or would not) go through."""
    if not account_exists:
        return NotFound("Unknown account")
    if not has_key:
        assert kind.key_name is not None
        return MissingProviderKey(kind.key_name, kind.provider)
    return InsufficientBalance(
        f"Insufficient balance: this call costs ${to_dollars(price):.2f}; "
        "top up (POST /topup_card) or save a card for auto-recharge"
    )


async def ensure_can_pay(st: AppState, who: Principal, kind: TaskKind, idempotency_key: str | None) -> None:
    """Refuse a caller who could not pay for ``kind`` before anything costly is done for them
    (an image fetched, decoded or stored). The charge statement remains the guard; this only
    makes the refusal early. A replay of a request that was paid for is let through."""
    repo = TaskRepository(st.db)
    if idempotency_key is not None and await repo.by_idempotency_key(who.uid, idempotency_key) is not None:
        return
    price = kind.price_micros(st.settings)
    can = await repo.can_pay(who.uid, price, kind.key_name)
    if not (can.account_exists and can.has_key and can.covers):
        raise refusal(kind, price, account_exists=can.account_exists, has_key=can.has_key)


Prepare = Callable[[], Awaitable[None]]


async def submit(st: AppState, who: Principal, kind: TaskKind, *, model: str | None, prompt: str | None,
                 request: dict[str, Any], idempotency_key: str | None, wait: bool,
                 prepare: Prepare | None = None) -> Submitted:
    """Charge, then ``prepare`` (what the job needs that must not exist unpaid, e.g. an image
    blob in Redis), then enqueue."""
    repo = TaskRepository(st.db)
    request_hash = None
    if idempotency_key is not None:
        request_hash = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
                                      + kind.name.encode()).digest()
        prior = await repo.by_idempotency_key(who.uid, idempotency_key)
        if prior is not None:
            return await _replay(st, prior, request_hash, wait)

    price = kind.price_micros(st.settings)
    new = NewTask(job_id=str(uuid.uuid4()), uid=who.uid, kind=kind.name, pool=kind.pool, model=model,
                  prompt=prompt, request=request, cost_micros=price, key_name=kind.key_name,
                  idempotency_key=idempotency_key, request_hash=request_hash)
    try:
        if idempotency_key is None:
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
        raise refusal(kind, price, account_exists=outcome.account_exists, has_key=outcome.has_key)

    job = Job(kind.pool, kind.function, new.job_id, (new.job_id,),
              status=StatusStore.initial(who.uid, outcome.task_id, kind.name))
    try:
        if prepare is not None:
            await prepare()
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
    # The first request owns the done list; a replay watches the status hash instead. Replays are
    # free, so how many may wait on one task is bounded; the rest are told to poll (409).
    waiters = keys.replay_waiters(job_id)
    async with st.redis.pipeline(transaction=True) as pipe:
        pipe.incr(waiters)
        pipe.expire(waiters, int(st.settings.sync_timeout_seconds) + 5)
        count, _ = await pipe.execute()
    try:
        if count > st.settings.idempotent_replay_waiters:
            raise IdempotencyInProgress({"job_id": job_id, "get": status_url(st, job_id)})
        return await _wait_replay(st, prior, job_id)
    finally:
        await st.redis.decr(waiters)


async def _wait_replay(st: AppState, prior: asyncpg.Record, job_id: str) -> Submitted:
    deadline = time.monotonic() + st.settings.sync_timeout_seconds
    pause = 0.05
    while time.monotonic() < deadline:
        cur = await st.status.read(job_id)
        if cur is not None and cur["status"] != "in_progress":
            row = await TaskRepository(st.db).by_job_id(job_id)
            assert row is not None
            return Submitted(prior["id"], job_id, result_from_row(row))
        # Backing off: a replay that waits long costs a read a second, not twenty.
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 1.5)
    return Submitted(prior["id"], job_id, None)
