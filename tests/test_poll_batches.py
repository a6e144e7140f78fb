"""Polls that share their round trips (issue 12): the chain key set by the enqueue script, the
state reads and progress writes of concurrent polls batched, the GET built without httpx's URL
merge. Whatever shares a batch, a prediction still ends exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.jobs import Job as ArqJob

from jobs import keys
from jobs.names import GENERATE, MEDIA_POLL
from jobs.queue import Job
from jobs.serialize import loads
from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.media import Sim
from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker
from tests.helpers import generate, wait_status


@pytest.fixture
async def media_only(app: Any, fast_polls: Any) -> AsyncIterator[Any]:
    """A media worker only: the test runs the polls itself."""
    media = await start_inprocess_worker("media")
    yield media[0]
    await stop_inprocess_worker(*media)


async def _charged(app: Any, make_account: MakeAccount, n: int) -> list[str]:
    from storage.charges import NewTask
    from storage.tasks import TaskRepository

    st = app.state.sn
    acct = await make_account(balance="10", keys={"replicate_key": "r8_batches"})
    ids = [f"pb-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    outcomes = await TaskRepository(st.db).charge_many(acct.uid, [NewTask(
        job_id=j, uid=acct.uid, kind=GENERATE.name, pool=GENERATE.pool, model="o/m", prompt=None,
        request={"model": "o/m", "input": {}}, cost_micros=1, key_name=GENERATE.key_name) for j in ids])
    assert all(o.task_id for o in outcomes)
    await st.db.execute("UPDATE tasks SET status = 'running', provider_id = 'p-' || job_id WHERE uid = $1",
                        acct.uid)
    for j in ids:
        await st.db.execute("INSERT INTO predictions (job_id, create_started_at) VALUES ($1, now())", j)
    return ids


async def _cleanup(app: Any, ids: list[str]) -> None:
    await app.state.sn.db.execute("UPDATE tasks SET status = 'canceled' WHERE job_id = ANY($1::text[])", ids)


async def test_a_chain_link_names_itself_in_its_own_enqueue_and_arq_reads_it(app: Any) -> None:
    st = app.state.sn
    job_id = f"pb-{uuid.uuid4().hex[:10]}"
    link = f"{job_id}:poll:3"
    pointer = (keys.poll_chain(job_id), 600)
    assert await st.queue.enqueue(Job("poll", MEDIA_POLL, link, (job_id, 3, True), defer_ms=600_000,
                                      pointer=pointer))
    assert await st.redis.get(keys.poll_chain(job_id)) == link.encode()
    assert 590 <= await st.redis.ttl(keys.poll_chain(job_id)) <= 600
    info = await ArqJob(link, st.redis, _queue_name=keys.queue("poll"), _deserializer=loads).info()
    assert info is not None and info.function == MEDIA_POLL and list(info.args) == [job_id, 3, True]
    # A re-run poll re-enqueues a link arq still holds: a no-op, but the key names it all the same.
    await st.redis.set(keys.poll_chain(job_id), "elsewhere")
    assert not await st.queue.enqueue(Job("poll", MEDIA_POLL, link, (job_id, 3, True), defer_ms=600_000,
                                          pointer=pointer))
    assert await st.redis.get(keys.poll_chain(job_id)) == link.encode()
    # Without a pointer nothing else is written (the status hash is still seeded as before).
    plain = f"{job_id}:plain"
    assert await st.queue.enqueue(Job("poll", MEDIA_POLL, plain, (job_id, 0, False), defer_ms=600_000,
                                      status={"status": "in_progress"}))
    assert await st.redis.get(keys.poll_chain(job_id)) == link.encode()
    assert await st.redis.hget(keys.task_status(plain), "status") == b"in_progress"
    for j in (link, plain):
        await st.queue.remove("poll", j)


async def test_concurrent_polls_share_a_read_and_each_sees_its_own_fresh_row(
        app: Any, make_account: MakeAccount) -> None:
    from storage.polls import PollBatches

    st = app.state.sn
    ids = await _charged(app, make_account, 3)
    polls = PollBatches(st.db, st.status)
    try:
        *found, missing = await asyncio.gather(*(polls.state(j) for j in [*ids, ids[0], "pb-missing"]))
        assert missing is None
        rows = [r for r in found if r is not None]
        assert [r["job_id"] for r in rows] == [*ids, ids[0]]
        assert all(r["provider_id"] == f"p-{r['job_id']}" and not r["cancel_requested"] for r in rows[:4])
        assert all(r["ciphertext"] is not None and r["request"] is None for r in rows[:4])
        # A cancel or a terminal status written between two polls is seen by the next batch.
        await st.db.execute("UPDATE predictions SET cancel_requested = true WHERE job_id = $1", ids[1])
        await st.db.execute("UPDATE tasks SET status = 'completed' WHERE job_id = $1", ids[2])
        again = [r for r in await asyncio.gather(*(polls.state(j) for j in ids)) if r is not None]
        assert [r["cancel_requested"] for r in again] == [False, True, False]
        assert [r["status"] for r in again] == ["running", "running", "completed"]
    finally:
        await _cleanup(app, ids)


async def test_batched_progress_writes_keep_the_last_status_and_never_overwrite_an_end(
        app: Any, make_account: MakeAccount) -> None:
    from jobs.results import TaskResult
    from storage.polls import PollBatches
    from storage.status import now_iso

    st = app.state.sn
    ids = await _charged(app, make_account, 2)
    polls = PollBatches(st.db, st.status)
    try:
        # The webhook path published the end of ids[1] after its poll read "processing".
        done = TaskResult(status="completed", output="done", error=None, task_id=0, model=None, cost_micros=0,
                          updated_at=now_iso())
        await st.status.publish(ids[1], done, notify=False)
        await asyncio.gather(polls.polled(ids[0], "starting"), polls.polled(ids[0], "processing"),
                             polls.polled(ids[1], "processing"))
        rows = {r["job_id"]: r for r in await st.db.fetch(
            "SELECT job_id, provider_status, polls FROM predictions WHERE job_id = ANY($1::text[])", ids)}
        assert rows[ids[0]]["provider_status"] == "processing" and rows[ids[0]]["polls"] >= 1
        assert rows[ids[1]]["provider_status"] == "processing"
        first = await st.redis.hgetall(keys.task_status(ids[0]))
        assert first[b"status"] == b"in_progress" and first[b"provider_status"] == b"processing"
        assert await st.redis.hget(keys.task_status(ids[1]), "status") == b"completed"
    finally:
        await _cleanup(app, ids)


async def test_a_webhook_poll_and_a_chain_link_in_one_batch_end_the_prediction_once(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_only: Any, app: Any) -> None:
    from storage.tasks import TaskRepository
    from workers.poll import media_poll

    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 0.1}})
    for _ in range(200):
        row = await TaskRepository(app.state.sn.db).by_job_id(job)
        if row is not None and row["status"] == "running":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # finished at the simulator; no poll worker has looked yet
    outcomes = await asyncio.gather(media_poll(media_only.ctx, job, 0, False),
                                    media_poll(media_only.ctx, job, 1, True),
                                    media_poll(media_only.ctx, job, 0, False))
    assert sorted(o["outcome"] for o in outcomes).count("completed") == 1, outcomes
    assert {o["outcome"] for o in outcomes} <= {"completed", "busy", "duplicate"}
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"
    balance, total = await audit(app, replicate_account.uid)
    assert balance == total == 4_980_000  # charged once, never refunded


def test_a_prepared_get_is_the_request_httpx_would_build() -> None:
    from workers.providers.http import bearer_get, make_client

    client = make_client("https://api.replicate.test/v1", connect_timeout=3, read_timeout=7)
    for path in ("/predictions/abc123", "predictions/x y", "/predictions/a%2Fb"):
        ours = bearer_get(client, path, "r8_key")
        theirs = client.build_request("GET", path, headers={"Authorization": "Bearer r8_key"})
        assert ours.method == theirs.method and ours.url == theirs.url, path
        assert sorted(ours.headers.multi_items()) == sorted(theirs.headers.multi_items())
        assert ours.extensions == theirs.extensions


def test_a_prepared_get_works_for_a_base_url_with_no_path() -> None:
    # SYNCNODE_REPLICATE_BASE_URL may name a proxy at a host's root: httpx keeps that base's "/"
    # only in raw_path, not in str(), so "host:port" + "predictions/…" once parsed as a bad port.
    from workers.providers.http import bearer_get, make_client

    for base in ("http://127.0.0.1:8080", "https://replicate-proxy.internal"):
        client = make_client(base, connect_timeout=3, read_timeout=7)
        ours = bearer_get(client, "/predictions/abc123", "r8_key")
        assert ours.url == client.build_request("GET", "/predictions/abc123").url == base + "/predictions/abc123"
