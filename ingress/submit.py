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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError

from billing.recharge import recharge_job
from ingress.auth import Principal
from ingress.hooks import WebhookTarget
from ingress.slots import slot
from ingress.state import AppState
from jobs import keys
from jobs.errors import (
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientBalance,
    MissingProviderKey,
    NotFound,
    RateLimited,
    SyncNodeError,
    Unavailable,
)
from jobs.names import TaskKind
from jobs.queue import Job
from jobs.results import TaskResult
from jobs.settings import to_dollars
from storage.billing import BillingRepository
from storage.charges import NewTask
from storage.status import StatusStore
from storage.tasks import TERMINAL, TaskRepository

log = logging.getLogger("syncnode.ingress")


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: int
    job_id: str
    # The final result when the caller waited and it arrived in time.
    result: TaskResult | None


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


async def ensure_can_pay(st: AppState, who: Principal, kind: TaskKind, idempotency_key: str | None) -> int:
    """Refuse a caller who could not pay for ``kind`` before anything is read or done for them.
    Returns how many such calls the balance covers (the cap on their concurrent pre-charge work).
    The charge statement remains the guard; this only makes the refusal early. A request that
    reuses a key is let through: :func:`replay` settles it before any work."""
    repo = TaskRepository(st.db)
    if idempotency_key is not None and await repo.by_idempotency_key(who.uid, idempotency_key) is not None:
        return 1
    if st.limiter is not None:
        await st.limiter.check_in_flight(who.uid, kind.pool)
    price = kind.price_micros(st.settings)
    can = await repo.can_pay(who.uid, price, kind.key_name)
    if not (can.account_exists and can.has_key and can.covers):
        if can.account_exists and can.has_key and await BillingRepository(st.db).recharge_armed(who.uid):
            await _recharge(st, who.uid, price)  # short now: the card refills it for the next call
        raise refusal(kind, price, account_exists=can.account_exists, has_key=can.has_key)
    return can.calls


@asynccontextmanager
async def paid_work(st: AppState, who: Principal, calls: int) -> AsyncIterator[None]:
    """Work done before the charge (fetching, decoding an image) runs for at most as many of an
    account's requests at once as its balance pays for: a read is not a reservation, and 30
    concurrent requests from a $0.01 account must not buy 30 fetches and decodes."""
    limit = max(1, min(calls, st.settings.prework_per_account))
    async with slot(st.redis, keys.prework(who.uid), st.settings.sync_timeout_seconds) as held:
        if held > limit:
            raise RateLimited(f"At most {limit} image checks at once for this balance; retry when one finishes",
                              headers={"Retry-After": "1"})
        yield


def body_hash(kind: TaskKind, body: dict[str, Any], webhook: WebhookTarget | None = None) -> bytes:
    """The Idempotency-Key fingerprint of a request as sent (before any fetch or decode)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + kind.name.encode()
                          + (orjson.dumps(webhook) if webhook else b"")).digest()


async def replay(st: AppState, who: Principal, idempotency_key: str | None, request_hash: bytes,
                 wait: bool) -> Submitted | None:
    """For routes that work before charging: a request reusing a key is answered (or refused,
    409) from the task it names before any of that work is done."""
    if idempotency_key is None:
        return None
    prior = await TaskRepository(st.db).by_idempotency_key(who.uid, idempotency_key)
    return None if prior is None else await _replay(st, prior, request_hash, wait)


Prepare = Callable[[], Awaitable[None]]


async def submit(st: AppState, who: Principal, kind: TaskKind, *, model: str | None, prompt: str | None,
                 request: dict[str, Any], idempotency_key: str | None, wait: bool,
                 prepare: Prepare | None = None, request_hash: bytes | None = None,
                 webhook: WebhookTarget | None = None) -> Submitted:
    """Charge, then ``prepare`` (what the job needs that must not exist unpaid, e.g. an image
    blob in Redis), then enqueue. ``webhook``: a target ``ingress.hooks.webhook_target``
    validated, or None."""
    repo = TaskRepository(st.db)
    if idempotency_key is None:
        request_hash = None
    else:
        request_hash = request_hash or body_hash(kind, request, webhook)
        prior = await repo.by_idempotency_key(who.uid, idempotency_key)
        if prior is not None:
            return await _replay(st, prior, request_hash, wait)

    price = kind.price_micros(st.settings)
    job_id = str(uuid.uuid4())
    # Counted in flight before the charge: an account at its limit is refused, charged nothing.
    counted = st.limiter is not None and await st.limiter.admit(who.uid, kind.pool, job_id)

    async def uncount() -> None:  # the charge did not happen: the slot was never used
        if counted and st.limiter is not None:
            await st.limiter.release(who.uid, kind.pool, job_id)

    return await _charge_and_enqueue(st, who, kind, job_id, price, uncount, model=model, prompt=prompt,
                                     request=request, idempotency_key=idempotency_key, wait=wait,
                                     prepare=prepare, request_hash=request_hash, webhook=webhook)


async def _charge_and_enqueue(st: AppState, who: Principal, kind: TaskKind, job_id: str, price: int,
                              uncount: Callable[[], Awaitable[None]], *,
                              model: str | None, prompt: str | None, request: dict[str, Any],
                              idempotency_key: str | None, wait: bool, prepare: Prepare | None,
                              request_hash: bytes | None, webhook: WebhookTarget | None) -> Submitted:
    repo = TaskRepository(st.db)
    new = NewTask(job_id=job_id, uid=who.uid, kind=kind.name, pool=kind.pool, model=model,
                  prompt=prompt, request=request, cost_micros=price, key_name=kind.key_name,
                  idempotency_key=idempotency_key, request_hash=request_hash,
                  webhook=webhook[0] if webhook else None, webhook_events=webhook[1] if webhook else None)
    try:
        # A waiting request answers only with the worker's result, after its synchronous commit.
        outcome = await st.tasks.charge(new, answer_after_worker=wait)
    except asyncpg.UniqueViolationError:
        await uncount()
        # Another request with the same Idempotency-Key committed first: answer as its replay.
        prior = await repo.by_idempotency_key(who.uid, idempotency_key or "")
        assert prior is not None
        return await _replay(st, prior, request_hash, wait)
    except BaseException:
        await uncount()
        raise
    if outcome.task_id is None:
        await uncount()
        if outcome.account_exists and outcome.has_key and await BillingRepository(st.db).recharge_armed(who.uid):
            await _recharge(st, who.uid, price)
        raise refusal(kind, price, account_exists=outcome.account_exists, has_key=outcome.has_key)

    if outcome.recharge:
        await _recharge(st, who.uid, 0)
    status = StatusStore.initial(who.uid, outcome.task_id, kind.name)
    if wait:
        status["reply"] = st.replies.key
    job = Job(kind.pool, kind.function, new.job_id, (new.job_id,), status=status)
    try:
        if prepare is not None:
            await prepare()
        if wait:
            result = await st.replies.wait(new.job_id, st.queue.enqueue(job), st.settings.sync_timeout_seconds)
        else:
            await st.queue.enqueue(job)
            result = None
    except RedisError:
        return await _withdraw(st, outcome.task_id, new.job_id)
    return Submitted(outcome.task_id, new.job_id, result)


async def _withdraw(st: AppState, task_id: int, job_id: str) -> Submitted:
    """The rule: a 503 costs nothing (README "Restarts, scale-out and shutdown"). Clients and SDKs retry a
    503, so a charge kept behind one would be paid twice. The enqueue (or the wait) failed after
    the charge: the task is failed and refunded before answering. If a worker did get the job
    and finished first, that result is the answer; a worker that reads the task after this does
    not run it, and the sweeper only takes queued tasks."""
    log.warning("enqueue of %s failed (Redis unavailable): its charge is undone", job_id, exc_info=True)
    repo = TaskRepository(st.db)
    if await repo.withdraw(job_id, "The queue was unavailable; nothing was charged") is None:
        row = await repo.by_job_id(job_id)
        assert row is not None
        return Submitted(task_id, job_id, TaskResult.from_row(row))
    raise Unavailable("The queue is unavailable right now; nothing was charged: retry shortly",
                      headers={"Retry-After": "1"})


async def _recharge(st: AppState, uid: str, need_micros: int) -> None:
    """Ask the billing pool to recharge: one job id per account, so arq keeps one queued.

    Never awaited beyond the enqueue: a paid call does not wait on the card.
    """
    try:
        await st.queue.enqueue(recharge_job(uid, need_micros))
    except RedisError:
        log.warning("could not enqueue the auto-recharge of %s", uid, exc_info=True)


async def _replay(st: AppState, prior: asyncpg.Record, request_hash: bytes | None,
                  wait: bool) -> Submitted:
    if prior["request_hash"] != request_hash:
        raise IdempotencyConflict()
    job_id = prior["job_id"]
    if prior["status"] in TERMINAL or not wait:
        return Submitted(prior["id"], job_id, TaskResult.from_row(prior) if prior["status"] in TERMINAL else None)
    # The first request owns the done list; a replay watches the status hash instead. Replays are
    # free, so how many may wait on one task is bounded; the rest are told to poll (409).
    async with slot(st.redis, keys.replay_waiters(job_id), st.settings.sync_timeout_seconds + 5) as held:
        if held > st.settings.idempotent_replay_waiters:
            raise IdempotencyInProgress({"job_id": job_id, "get": status_url(st, job_id)})
        return await _wait_replay(st, prior, job_id)


async def _wait_replay(st: AppState, prior: asyncpg.Record, job_id: str) -> Submitted:
    deadline = time.monotonic() + st.settings.sync_timeout_seconds
    pause = 0.05
    while time.monotonic() < deadline:
        cur = await st.status.read(job_id)
        if cur is not None and cur["status"] != "in_progress":
            row = await TaskRepository(st.db).by_job_id(job_id)
            assert row is not None
            return Submitted(prior["id"], job_id, TaskResult.from_row(row))
        # Backing off: a replay that waits long costs a read a second, not twenty.
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 1.5)
    return Submitted(prior["id"], job_id, None)
