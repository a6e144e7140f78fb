"""``Tasks`` reads and completes a lone task with the single-row statement and a crowd with the
batched one: the worker must get the same row either way."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from jobs.names import CHAT as KIND
from storage.charges import NewTask
from storage.task_batches import Tasks
from tests.fixtures.accounts import MakeAccount

KEYS = {"openrouter_key": "sk-or-v1-batches"}
# What the worker reads of a task (workers/runner.py and the job functions).
READ = ("id", "uid", "kind", "model", "request", "status", "provider_id", "cost_micros", "created_at", "ciphertext")
# What a completion hands to TaskResult.finished.
DONE = ("id", "uid", "model", "cost_micros")


async def _charged(tasks: Tasks, uid: str, n: int, price: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, job_id in enumerate(ids):
        new = NewTask(job_id=job_id, uid=uid, kind=KIND.name, pool=KIND.pool, model=f"m{i}", prompt="p",
                      request={"model": f"m{i}", "messages": [{"role": "user", "content": f"batch {i}"}]},
                      cost_micros=price, key_name=KIND.key_name)
        assert (await tasks.charge(new)).task_id is not None
    return ids


def _fields(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: row[n] for n in names}


async def test_a_lone_read_and_a_batched_read_give_the_same_rows(make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(balance="1", keys=KEYS)
    tasks: Tasks = app.state.sn.tasks
    ids = await _charged(tasks, acct.uid, 4, KIND.price_micros(app.state.sn.settings))
    alone = [await tasks.for_worker(j, KIND.key_name) for j in ids]
    together = await asyncio.gather(*(tasks.for_worker(j, KIND.key_name) for j in ids))
    lone = [r for r in alone if r is not None]
    crowd = [r for r in together if r is not None]
    assert len(lone) == len(crowd) == 4
    assert [_fields(r, READ) for r in lone] == [_fields(r, READ) for r in crowd]
    assert [r["model"] for r in lone] == ["m0", "m1", "m2", "m3"]
    assert all(r["status"] == "queued" and r["ciphertext"] for r in lone)
    missing = str(uuid.uuid4())
    assert await tasks.for_worker(missing, KIND.key_name) is None
    assert (await asyncio.gather(tasks.for_worker(missing, KIND.key_name), tasks.for_worker(ids[0], None)))[0] is None
    await asyncio.gather(*(tasks.complete(j, {"text": "done"}) for j in ids))


async def test_a_lone_completion_and_a_batched_one_finish_once(make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(balance="1", keys=KEYS)
    tasks: Tasks = app.state.sn.tasks
    lone, *crowd = await _charged(tasks, acct.uid, 4, KIND.price_micros(app.state.sn.settings))
    first = await tasks.complete(lone, {"text": "alone"})
    batch = await asyncio.gather(*(tasks.complete(j, {"text": "together"}) for j in crowd))
    assert first is not None and all(r is not None for r in batch)
    assert _fields(first, DONE) == {"id": first["id"], "uid": acct.uid, "model": "m0", "cost_micros": 20_000}
    assert [r["model"] for r in batch if r is not None] == ["m1", "m2", "m3"]
    # Finished already: neither path finishes it again, alone or in a crowd.
    assert await tasks.complete(lone, {"text": "again"}) is None
    again = await asyncio.gather(*(tasks.complete(j, {"text": "again"}) for j in [lone, *crowd]))
    assert again == [None] * 4
    rows = await app.state.sn.db.fetch("SELECT job_id, status, output FROM tasks WHERE uid = $1", acct.uid)
    assert {r["job_id"]: (r["status"], r["output"]["text"]) for r in rows} == {
        lone: ("completed", "alone"), **{j: ("completed", "together") for j in crowd}}
