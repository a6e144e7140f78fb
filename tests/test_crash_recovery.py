"""Nothing is lost when a process dies: a killed worker's job runs again, a task committed but
never enqueued is enqueued by the sweeper, a job arq gave up on is refunded."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import httpx

from jobs.names import CHAT
from storage.tasks import NewTask, TaskRepository
from tests.fixtures.accounts import Account, audit
from tests.test_chat import CHAT as CHAT_PATH
from tests.test_chat import calls_for, poll_until_done


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


async def test_redis_down_at_enqueue_keeps_the_task_for_the_sweeper(
        client: httpx.AsyncClient, funded: Account, app: Any, monkeypatch: Any) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection refused")

    monkeypatch.setattr(app.state.sn.queue, "enqueue_and_wait", down)
    r = await client.post(CHAT_PATH, headers=funded.headers, json={"model": "m", "prompt": "later"})
    assert r.status_code == 503
    assert r.json()["job_id"]
    row = await TaskRepository(app.state.sn.db).by_job_id(r.json()["job_id"])
    assert row is not None and row["status"] == "queued"  # recorded; the sweeper will run it
    # Not left lost for the next test's sweep to count (its assertion is global).
    await TaskRepository(app.state.sn.db).finish_unpaid(r.json()["job_id"], "canceled", "test cleanup")


async def test_sweeper_finds_a_lost_task_behind_a_backlog(funded: Account, app: Any) -> None:
    from arq.connections import RedisSettings, create_pool

    from jobs.queue import Job
    from workers.context import on_shutdown, on_startup_for
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
    ctx: dict[str, Any] = {"redis": await create_pool(RedisSettings.from_dsn(st.settings.redis_url))}
    await on_startup_for("chat", 10)(ctx)
    try:
        counts = await sweep(ctx)
    finally:
        await on_shutdown(ctx)
        for j in [*backlog, lost]:
            await st.queue.remove(CHAT.pool, j)
        await st.db.execute("UPDATE tasks SET status = 'canceled' WHERE uid = $1 AND status = 'queued'",
                            funded.uid)
    assert counts["requeued"] == 1


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
