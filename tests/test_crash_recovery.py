"""Nothing is lost when a process dies: a killed worker's job runs again, a task committed but
never enqueued is enqueued by the sweeper, a job arq gave up on is refunded."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import httpx

from jobs import keys
from jobs.names import CHAT
from storage.charges import NewTask
from storage.tasks import TaskRepository
from tests.fixtures.accounts import Account, audit
from tests.fixtures.workers import worker_ctx
from tests.helpers import CHAT as CHAT_PATH
from tests.helpers import calls_for, poll_until_done


async def _wait_for_call(prompt: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.02)):
        if calls_for(prompt):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the provider was never called")


async def test_worker_killed_mid_job_runs_it_again_and_completes_once(
        client: httpx.AsyncClient, funded: Account, worker_process: Any, app: Any) -> None:
    prompt = f"survive {uuid.uuid4()}"
    first = worker_process("chat")
    r = await client.post(CHAT_PATH, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "slow-1.5", "prompt": prompt})
    job_id = r.json()["job_id"]
    await _wait_for_call(prompt)
    first.send_signal(signal.SIGKILL)
    first.wait()
    worker_process("chat")
    status = await poll_until_done(client, funded, job_id, timeout=30)
    assert status["replicate_status"] == "completed"
    assert len(calls_for(prompt)) == 2  # the killed run, then the re-run after the lease lapsed
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)
    row = await TaskRepository(app.state.sn.db).by_job_id(job_id)
    assert row is not None and row["status"] == "completed"
    kinds = [r["kind"] for r in await app.state.sn.db.fetch(
        "SELECT kind FROM ledger WHERE task_id = $1", row["id"])]
    assert kinds == ["charge"]


async def test_committed_but_never_enqueued_is_swept(client: httpx.AsyncClient, funded: Account,
                                                     chat_worker: Any, app: Any) -> None:
    st = app.state.sn
    job_id = str(uuid.uuid4())
    prompt = f"orphan {job_id}"
    # What the ingress commits before it would enqueue; it "crashes" here.
    outcome = await TaskRepository(st.db).charge_and_create(NewTask(
        job_id=job_id, uid=funded.uid, kind=CHAT.name, pool=CHAT.pool, model="m", prompt=prompt,
        request={"model": "m", "messages": [{"role": "user", "content": prompt}]},
        cost_micros=CHAT.price_micros(st.settings), key_name=CHAT.key_name))
    assert outcome.task_id is not None
    status = await poll_until_done(client, funded, job_id, timeout=20)
    assert status["replicate_status"] == "completed"
    assert len(calls_for(prompt)) == 1
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_job_arq_gave_up_on_is_failed_and_refunded(client: httpx.AsyncClient, funded: Account,
                                                         chat_worker: Any, app: Any) -> None:
    st = app.state.sn
    job_id = str(uuid.uuid4())
    await TaskRepository(st.db).charge_and_create(NewTask(
        job_id=job_id, uid=funded.uid, kind=CHAT.name, pool=CHAT.pool, model="m", prompt="x",
        request={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        cost_micros=CHAT.price_micros(st.settings), key_name=CHAT.key_name))
    # arq's trace of a job it stopped retrying: a result, no job, no lock.
    await st.redis.set(f"arq:result:{job_id}", b'{"s": false, "r": "max 5 retries exceeded"}', ex=60)
    status = await poll_until_done(client, funded, job_id, timeout=20)
    assert status["replicate_status"] == "failed"
    assert "gave up" in status["error"]
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_redis_down_at_enqueue_answers_503_and_costs_nothing(
        client: httpx.AsyncClient, funded: Account, app: Any, monkeypatch: Any) -> None:
    """Scenario "a 503 costs nothing": the charge went through, the enqueue did not; clients retry
    a 503, so the charge is undone (task failed, refunded) before answering."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection refused")

    monkeypatch.setattr(app.state.sn.queue, "enqueue", down)
    for headers in ({}, {"Prefer": "respond-async"}, {"Idempotency-Key": f"k-{uuid.uuid4()}"}):
        r = await client.post(CHAT_PATH, headers={**funded.headers, **headers}, json={"model": "m", "prompt": "later"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "nothing was charged" in r.json()["error"]
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
    rows = await app.state.sn.db.fetch("SELECT status, refunded, idempotency_key FROM tasks WHERE uid = $1",
                                       funded.uid)
    assert [(r["status"], r["refunded"], r["idempotency_key"]) for r in rows] == [("failed", True, None)] * 3
    monkeypatch.undo()
    # The sweeper leaves such a task alone (it is not queued); a retry with the same key runs afresh.
    assert await TaskRepository(app.state.sn.db).stale(CHAT.pool, 0, 10) == []


async def test_enqueue_lost_but_the_job_ran_answers_its_result(
        client: httpx.AsyncClient, funded: Account, app: Any, chat_worker: Any, monkeypatch: Any) -> None:
    """The connection broke after the job reached Redis: the undo finds the task finished and the
    caller gets the result, charged once (not a 503 for work that was done and paid)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    replies = app.state.sn.replies  # the sync path's wait (ingress/replies.py)
    real = replies.wait

    async def lost_reply(job_id: str, enqueue: Any, timeout: float) -> Any:
        await real(job_id, enqueue, timeout)  # ran and finished; the reply is lost on the way back
        raise RedisConnectionError("connection reset")

    monkeypatch.setattr(replies, "wait", lost_reply)
    r = await client.post(CHAT_PATH, headers=funded.headers, json={"model": "m", "prompt": f"lost {uuid.uuid4()}"})
    assert r.status_code == 200, r.text
    assert r.json()["prediction"]["status"] == "completed"
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_sweeper_finds_a_lost_task_behind_a_backlog(funded: Account, app: Any) -> None:
    from jobs.queue import Job
    from workers.sweeper import sweep

    st = app.state.sn
    repo = TaskRepository(st.db)

    def task(job_id: str) -> NewTask:
        return NewTask(job_id=job_id, uid=funded.uid, kind=CHAT.name, pool=CHAT.pool, model="m", prompt="b",
                       request={"model": "m", "messages": [{"role": "user", "content": "b"}]}, cost_micros=1,
                       key_name=CHAT.key_name)

    backlog = [str(uuid.uuid4()) for _ in range(520)]
    outcomes = await repo.charge_many(funded.uid, [task(j) for j in backlog])
    assert all(o.task_id for o in outcomes)
    for j in backlog:  # queued in arq, waiting for a worker: the sweeper must leave them alone
        await st.queue.enqueue(Job(CHAT.pool, CHAT.function, j, (j,)))
    lost = str(uuid.uuid4())
    await repo.charge_and_create(task(lost))  # committed, never enqueued: newest of all
    await st.db.execute("UPDATE tasks SET created_at = created_at - interval '1 minute' WHERE uid = $1",
                        funded.uid)
    zset = keys.queue(CHAT.pool)
    try:
        async with worker_ctx("chat") as ctx:
            before = {j: await st.redis.zscore(zset, j) for j in backlog[:50]}
            counts = await sweep(ctx)
            lost_state = await st.queue.state(lost)
            after = {j: await st.redis.zscore(zset, j) for j in backlog[:50]}
    finally:
        for j in [*backlog, lost]:
            await st.queue.remove(CHAT.pool, j)
        await st.db.execute("UPDATE tasks SET status = 'canceled' WHERE uid = $1 AND status = 'queued'",
                            funded.uid)
    # The count also takes what earlier tests left queued and unqueued; what matters is that the
    # lost task behind the backlog was found and the queued ones were left as they were.
    assert lost_state == "active" and counts["requeued"] >= 1
    assert after == before


async def test_a_lease_taken_over_is_neither_renewed_nor_released(client: httpx.AsyncClient, funded: Account,
                                                                   chat_worker: Any, app: Any) -> None:
    redis = app.state.sn.redis
    r = await client.post(CHAT_PATH, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "slow-1.5", "prompt": f"lease {uuid.uuid4()}"})
    lock = f"arq:in-progress:{r.json()['job_id']}"
    for _ in range(100):
        if await redis.exists(lock):
            break
        await asyncio.sleep(0.02)
    assert (await redis.get(lock)).decode() == chat_worker.token
    # As if this worker's renewals had failed for a whole lease and another worker took the job.
    await redis.set(lock, b"another-worker", px=60_000)
    await poll_until_done(client, funded, r.json()["job_id"])
    await asyncio.sleep(0.2)
    assert await redis.get(lock) == b"another-worker"  # not released by the first worker
    assert await redis.pttl(lock) > 50_000  # nor renewed to its 2 s lease
