"""Webhooks, cancel, deadline, lost poll chains and a worker killed mid-create."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.accounts import Account, audit
from tests.fixtures.media import Sim
from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker
from tests.helpers import generate, refunds, wait_status


async def _task(app: Any, job_id: str) -> Any:
    from storage.tasks import TaskRepository

    return await TaskRepository(app.state.sn.db).by_job_id(job_id)


async def _deliver(client: httpx.AsyncClient, msg: dict[str, Any], **override: str) -> httpx.Response:
    u = urlsplit(msg["url"])
    return await client.post(f"{u.path}?{u.query}", content=msg["body"], headers={**msg["headers"], **override})


async def _creates(sim: Sim, n: int = 1) -> list[dict[str, Any]]:
    for _ in range(200):
        out = await sim.creates()
        if len(out) >= n:
            return out
        await asyncio.sleep(0.05)
    raise AssertionError("no prediction created")


async def _outbox(sim: Sim, n: int = 1) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(400):
        out += await sim.outbox()  # reading drains it
        if len(out) >= n:
            return out
        await asyncio.sleep(0.05)
    raise AssertionError("no webhook queued")


async def test_webhooks_duplicate_late_and_bad_signature(client: httpx.AsyncClient, replicate_account: Account,
                                                         sim: Sim, media_workers: Any, app: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = app.state.sn.settings
    monkeypatch.setattr(s, "replicate_webhooks", "on")
    monkeypatch.setattr(s, "poll_first_seconds", 30.0)  # polling is out of the way: webhook only
    monkeypatch.setattr(s, "poll_cap_seconds", 30.0)
    hooks: list[Any] = []
    real_enqueue = app.state.sn.queue.enqueue

    async def spy(job: Any) -> bool:
        if ":hook:" in job.job_id:
            hooks.append(job)
        return bool(await real_enqueue(job))

    monkeypatch.setattr(app.state.sn.queue, "enqueue", spy)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "file"}})
    (create,) = await _creates(sim)
    assert create["body"]["webhook"] == f"http://gateway.test/webhooks/replicate?job_id={job}"
    assert create["body"]["webhook_events_filter"] == ["completed"]
    (msg,) = await _outbox(sim)
    bad = await _deliver(client, msg, **{"webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
    assert bad.status_code == 401 and "signature" in bad.json()["error"]
    await asyncio.sleep(0.3)
    assert (await _task(app, job))["status"] == "running"  # ignored
    r1, r2 = await asyncio.gather(_deliver(client, msg), _deliver(client, msg))
    assert r1.status_code == r2.status_code == 200
    body = await wait_status(client, replicate_account, job, timeout=5)
    assert body["replicate_status"] == "completed"
    assert body["output"] == f"http://gateway.test/files/{job}/0.png"
    # Ahead of routine polls that are already due (tests/test_queue_scheduling.py).
    assert hooks and all(h.urgent for h in hooks)
    # A late (re)delivery after the end changes nothing.
    assert (await _deliver(client, msg)).status_code == 200
    await asyncio.sleep(0.3)
    row = await _task(app, job)
    assert row["status"] == "completed" and not row["refunded"]
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)


async def test_webhook_and_poll_race_one_terminal_state(client: httpx.AsyncClient, replicate_account: Account,
                                                        sim: Sim, media_workers: Any, app: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "replicate_webhooks", "on")
    jobs = [await generate(client, replicate_account, "owner/model", {"i": i, "sim": {"outcome": "failed"}})
            for i in range(4)]
    msgs = await _outbox(sim, 4)
    await asyncio.gather(*(_deliver(client, m) for m in msgs for _ in range(3)))
    for j in jobs:
        assert (await wait_status(client, replicate_account, j))["replicate_status"] == "failed"
    await asyncio.sleep(0.5)  # let every poll and hook job run out
    for j in jobs:
        assert await refunds(app, j) == 1
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)


async def test_unknown_job_webhook_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/webhooks/replicate?job_id=nope", content=b"{}")
    assert r.status_code == 401


async def test_cancel_running_prediction(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                                         media_workers: Any, app: Any) -> None:
    job = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "never"}})
    for _ in range(100):
        if (await _task(app, job))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    task_id = (await _task(app, job))["id"]
    r = await client.post(f"/tasks/{task_id}/cancel", headers=replicate_account.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": task_id, "job_id": job, "status": "canceled", "refunded": True}
    (pred,) = (await sim.predictions()).values()
    assert pred["status"] == "canceled"  # canceled at Replicate too
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "canceled"
    assert (await client.post(f"/tasks/{task_id}/cancel", headers=replicate_account.headers)).status_code == 200
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)


async def test_cancel_queued_task(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                                  app: Any, fast_polls: Any) -> None:
    job = await generate(client, replicate_account, "owner/model", {})  # no media worker running
    task_id = (await _task(app, job))["id"]
    r = await client.post(f"/tasks/{task_id}/cancel", headers=replicate_account.headers)
    assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["refunded"] is True
    assert await app.state.sn.queue.state(job) == "absent"
    media = await start_inprocess_worker("media")
    await asyncio.sleep(0.5)
    await stop_inprocess_worker(*media)
    assert await sim.creates() == []
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)


async def test_deadline_fails_cancels_and_refunds(client: httpx.AsyncClient, replicate_account: Account,
                                                  sim: Sim, media_workers: Any, app: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "prediction_deadline_seconds", 2)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "never"}})
    body = await wait_status(client, replicate_account, job, timeout=10)
    assert body["replicate_status"] == "failed" and "did not finish within 2 s" in body["error"]
    (create,) = await _creates(sim)
    assert create["cancel_after"] in ("5s", "2s")  # Replicate's minimum is 5 s
    (pred,) = (await sim.predictions()).values()
    assert pred["status"] == "canceled"
    assert await refunds(app, job) == 1


async def test_sweeper_restarts_a_lost_poll_chain(client: httpx.AsyncClient, replicate_account: Account,
                                                  sim: Sim, app: Any, fast_polls: Any) -> None:
    from jobs import keys

    media = await start_inprocess_worker("media")
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "text"}})
    redis = app.state.sn.redis
    for _ in range(200):
        if (raw := await redis.get(keys.poll_chain(job))) is not None:
            break
        await asyncio.sleep(0.05)
    # Lose the chain: the poll job vanishes from Redis before any poll worker saw it.
    chain = raw.decode()
    assert await app.state.sn.queue.remove("poll", chain)
    poll = await start_inprocess_worker("poll")
    try:
        body = await wait_status(client, replicate_account, job, timeout=15)
        assert body["replicate_status"] == "completed"
    finally:
        await stop_inprocess_worker(*poll)
        await stop_inprocess_worker(*media)


@pytest.mark.slow
async def test_worker_killed_mid_create_makes_one_prediction(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, app: Any, fast_polls: Any,
        worker_process: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCNODE_REPLICATE_WEBHOOKS", "off")
    first = worker_process("media")
    job = await generate(client, replicate_account, "owner/model", {"sim": {"create_delay": 5, "seconds": 0.2}})
    for _ in range(300):
        if await sim.creates():
            break
        await asyncio.sleep(0.05)
    # The replacement starts while the first still holds the job's lease (it cannot take the job
    # before the kill): its start-up (imports, ~1.5 s of CPU) is then off the critical path. Started
    # after the kill, two process start-ups ran back to back inside the wait below, and on a loaded
    # 2-core machine that alone could use up the 40 s.
    worker_process("media")
    os.kill(first.pid, signal.SIGKILL)  # the prediction exists; the worker never hears its id
    first.wait()
    row = await _task(app, job)
    assert row["provider_id"] is None and row["status"] == "queued"
    poll = await start_inprocess_worker("poll")
    try:
        body = await wait_status(client, replicate_account, job, timeout=40)
    finally:
        await stop_inprocess_worker(*poll)
    assert body["replicate_status"] == "completed"
    assert len(await sim.creates()) == 1 and len(await sim.predictions()) == 1
    assert (await _task(app, job))["provider_id"] == next(iter(await sim.predictions()))
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)
