"""Dead letters: a task job arq gave up on (tries exhausted, run abandoned at its timeout) ends
failed and refunded, as before, and leaves a record in ``syncnode:dead:<pool>``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from jobs import keys
from jobs.serialize import dumps
from storage.deadletters import DeadLetters, record
from tests.fixtures.accounts import Account, audit

CHAT = "/chat-completion"


async def dead_record(app: Any, job_id: str, pool: str = "chat", timeout: float = 20) -> dict[str, Any]:
    s = app.state.sn.settings
    dead = DeadLetters(app.state.sn.redis, s.dead_letter_max, s.dead_letter_ttl_seconds)
    for _ in range(int(timeout / 0.1)):
        for rec in await dead.list(pool):
            if rec["job_id"] == job_id:
                return rec
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter for {job_id}")


async def task_row(app: Any, job_id: str) -> Any:
    return await app.state.sn.db.fetchrow("SELECT status, refunded, error FROM tasks WHERE job_id = $1", job_id)


async def test_a_job_that_exhausts_its_tries_is_refunded_and_buried(
        client: httpx.AsyncClient, funded: Account, app: Any) -> None:
    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker

    redis = app.state.sn.redis
    r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": f"doomed {uuid.uuid4()}"})
    job_id = r.json()["job_id"]
    # Its five tries already ran and each was retried (Postgres unreachable, say): the next
    # pick is past max_tries, and arq gives up on it.
    await redis.set(keys.retry_key_prefix + job_id, 5, ex=600)
    await redis.set(keys.last_error(job_id), "ConnectionRefusedError: Postgres went away", ex=600)
    w, task = await start_inprocess_worker("chat")
    try:
        rec = await dead_record(app, job_id)
    finally:
        await stop_inprocess_worker(w, task)
    assert rec["function"] == "chat.openrouter" and rec["tries"] == 5 and rec["pool"] == "chat"
    assert "Postgres went away" in rec["error"] and "max 5 retries exceeded" in rec["error"]
    assert rec["uid"] == funded.uid and rec["refunded"] is True and rec["at"].endswith("Z")
    row = await task_row(app, job_id)
    assert (row["status"], row["refunded"]) == ("failed", True)
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
    # Its in-flight slot was given back by the final status.
    assert await redis.zscore(keys.in_flight("chat", funded.uid), job_id) is None


async def test_a_run_abandoned_at_its_timeout_is_refunded_and_buried(
        client: httpx.AsyncClient, funded: Account, app: Any) -> None:
    env = dict(os.environ, SYNCNODE_CHAT_JOB_TIMEOUT_SECONDS="1")
    worker = subprocess.Popen([sys.executable, "-m", "ingress.cli", "worker", "chat"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                              json={"model": "slow-3", "prompt": f"too slow {uuid.uuid4()}"})
        job_id = r.json()["job_id"]
        rec = await dead_record(app, job_id, timeout=30)
    finally:
        worker.kill()
        worker.wait()
    assert rec["function"] == "chat.openrouter" and rec["tries"] == 1
    assert "TimeoutError" in rec["error"]
    row = await task_row(app, job_id)
    assert (row["status"], row["refunded"]) == ("failed", True)
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_a_completed_job_leaves_no_dead_letter(client: httpx.AsyncClient, funded: Account,
                                                     chat_worker: Any, app: Any) -> None:
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "fine"})
    assert r.status_code == 200
    job_id = r.json()["prediction"]["job_id"]
    s = app.state.sn.settings
    recs = await DeadLetters(app.state.sn.redis, s.dead_letter_max, s.dead_letter_ttl_seconds).list("chat", 1000)
    assert job_id not in {x["job_id"] for x in recs}


async def test_dead_letters_are_capped_and_expire(app: Any) -> None:
    redis = app.state.sn.redis
    pool = f"test-{uuid.uuid4().hex[:8]}"
    dead = DeadLetters(redis, max_records=3, ttl_seconds=3600)
    for i in range(5):
        await dead.add(pool, record(f"j{i}", pool, function="f", tries=5, error="e"))
    assert [r["job_id"] for r in await dead.list(pool)] == ["j4", "j3", "j2"]  # newest first, capped
    assert await dead.count(pool) == 3
    # A record older than the TTL is neither listed nor counted, and goes at the next add.
    old = int((time.time() - 7200) * 1000)
    await redis.zadd(keys.dead(pool), {dumps(record("ancient", pool, function="f", tries=1, error="e")): old})
    assert await dead.count(pool) == 3 and "ancient" not in [r["job_id"] for r in await dead.list(pool)]
    await dead.add(pool, record("j5", pool, function="f", tries=5, error="e"))
    assert await redis.zcard(keys.dead(pool)) == 3
    assert 0 < await redis.ttl(keys.dead(pool)) <= 3600
    assert await dead.purge(pool) == 3 and await dead.count(pool) == 0


async def test_a_job_without_a_task_that_exhausts_its_tries_is_logged_and_shown(
        app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Dead letters are for tasks (a record means "failed and refunded"). A job with no task of its
    own (here a media.cancel; a webhook delivery, a recharge, a poll link or a cron alike) that arq
    gives up on leaves none: arq logs it at WARNING (SyncNode's logging keeps arq's warnings) and
    ``syncnode queue show`` gives arq's verdict while arq keeps the result. What the job was for
    is redone from Postgres: the poll chain cancels a prediction whose task asks for it, the
    dispatcher re-sends deliveries, reconciliation settles payments, the sweeper restarts chains."""
    from ingress.queue_cli import show
    from jobs.names import MEDIA_CANCEL
    from jobs.queue import Job
    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker

    redis, s = app.state.sn.redis, app.state.sn.settings
    job_id = f"{uuid.uuid4()}:cancel"
    assert await app.state.sn.queue.enqueue(Job("poll", MEDIA_CANCEL, job_id, (job_id[:-7],)))
    await redis.set(keys.retry_key_prefix + job_id, 5, ex=600)  # its five tries already ran
    w, task = await start_inprocess_worker("poll")
    try:
        for _ in range(100):
            if await redis.exists(keys.result_key_prefix + job_id):
                break
            await asyncio.sleep(0.1)
    finally:
        await stop_inprocess_worker(w, task)
    [line] = [r for r in caplog.records if r.name == "arq.worker" and job_id in r.getMessage()]
    assert line.levelno == logging.WARNING and "max retries 5 exceeded" in line.getMessage()
    dead = DeadLetters(redis, s.dead_letter_max, s.dead_letter_ttl_seconds)
    shown = await show(redis, dead, None, job_id)
    assert shown["arq_result"]["f"] == MEDIA_CANCEL and shown["arq_result"]["s"] is False
    assert "max 5 retries exceeded" in shown["arq_result"]["r"]
    assert shown["dead"] is None and shown["queue"] == []
