"""Which charges wait for their own fsync: only those whose request answers with the worker's
result commit without it (the worker's own synchronous commit flushes them before any answer);
fire-and-poll, Idempotency-Key and webhook charges keep theirs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from jobs.names import CHAT as KIND
from storage.charges import ChargeOutcome, NewTask
from storage.task_batches import Tasks
from storage.tasks import TaskRepository
from tests.fixtures.accounts import MakeAccount, audit
from tests.helpers import CHAT

KEYS = {"openrouter_key": "sk-or-v1-commit"}


def _task(uid: str, price: int) -> NewTask:
    return NewTask(job_id=str(uuid.uuid4()), uid=uid, kind=KIND.name, pool=KIND.pool, model="m", prompt="p",
                   request={"model": "m", "messages": [{"role": "user", "content": "commit"}]},
                   cost_micros=price, key_name=KIND.key_name)


async def _cancel_queued(app: Any, *uids: str) -> None:
    # Charged but never enqueued: keep the sweeper of a later test's worker from running them.
    await app.state.sn.db.execute("UPDATE tasks SET status = 'canceled' WHERE uid = ANY($1) AND status = 'queued'",
                                  list(uids))


async def test_each_charge_statement_commits_without_its_flush_only_when_asked(
        make_account: MakeAccount, app: Any) -> None:
    a = await make_account(balance="1", keys=KEYS)
    b = await make_account(balance="1", keys=KEYS)
    price = KIND.price_micros(app.state.sn.settings)
    async with app.state.sn.db.acquire() as conn:
        repo = TaskRepository(conn)
        assert (await repo.charge_and_create(_task(a.uid, price))).durable
        assert not (await repo.charge_and_create(_task(a.uid, price), durable=False)).durable
        many = await repo.charge_many(a.uid, [_task(a.uid, price), _task(a.uid, price)], durable=False)
        both = await repo.charge_batch([_task(a.uid, price), _task(b.uid, price)], durable=False)
        assert [o.durable for o in many + both] == [False] * 4
        assert all(o.task_id is not None for o in many + both)
        assert [o.durable for o in await repo.charge_batch([_task(a.uid, price), _task(b.uid, price)])] == [True] * 2
        # The setting was the transaction's own: the connection goes back to the pool as it came.
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    assert await audit(app, a.uid) == (1_000_000 - 6 * price, 1_000_000 - 6 * price)
    assert await audit(app, b.uid) == (1_000_000 - 2 * price, 1_000_000 - 2 * price)
    await _cancel_queued(app, a.uid, b.uid)


async def test_concurrent_charges_of_both_kinds_never_share_a_batch(make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(balance="1", keys=KEYS)
    price = KIND.price_micros(app.state.sn.settings)
    waits = [i % 2 == 0 for i in range(12)]
    out = await asyncio.gather(*(app.state.sn.tasks.charge(_task(acct.uid, price), answer_after_worker=w)
                                 for w in waits))
    assert [o.durable for o in out] == [not w for w in waits]
    assert await audit(app, acct.uid) == (1_000_000 - 12 * price, 1_000_000 - 12 * price)
    await _cancel_queued(app, acct.uid)


async def test_only_a_waiting_request_skips_the_charges_flush(client: httpx.AsyncClient, make_account: MakeAccount,
                                                             chat_worker: Any, app: Any) -> None:
    acct = await make_account(balance="1", keys=KEYS)
    tasks: Tasks = app.state.sn.tasks
    seen: list[tuple[bool, ChargeOutcome]] = []
    charge = tasks.charge

    async def spy(new: NewTask, *, answer_after_worker: bool = False) -> ChargeOutcome:
        out = await charge(new, answer_after_worker=answer_after_worker)
        seen.append((answer_after_worker, out))
        return out

    tasks.charge = spy  # type: ignore[method-assign]
    try:
        sync = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "sync commit"})
        fire = await client.post(CHAT, headers={**acct.headers, "Prefer": "respond-async"},
                                 json={"model": "m", "prompt": "fire commit"})
        idem = await client.post(CHAT, headers={**acct.headers, "Idempotency-Key": str(uuid.uuid4())},
                                 json={"model": "m", "prompt": "idempotent commit"})
    finally:
        del tasks.charge
    assert (sync.status_code, fire.status_code, idem.status_code) == (200, 202, 200)
    assert sync.json()["prediction"]["status"] == "completed"
    assert [(w, o.durable) for w, o in seen] == [(True, False), (False, True), (True, True)]
    job_id = fire.json()["job_id"]
    for _ in range(100):  # the fire-and-poll task finishes too (then the audit settles)
        row = await TaskRepository(app.state.sn.db).by_job_id(job_id)
        if row is not None and row["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert await audit(app, acct.uid) == (1_000_000 - 3 * 20_000, 1_000_000 - 3 * 20_000)
