"""Queue scheduling that the poll benchmark exposed: wake tokens only for runnable jobs, a
webhook's follow-up ahead of routine polls, and deferred jobs started when due."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from arq.jobs import deserialize_result

from jobs import keys
from jobs.names import MEDIA_POLL
from jobs.queue import Job
from jobs.serialize import loads
from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker


def _pool() -> str:
    # A pool no worker serves: the test reads the queue itself.
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_a_deferred_job_wakes_a_worker_only_when_it_is_the_next_one_due(app: Any) -> None:
    st, pool = app.state.sn, _pool()
    await st.queue.enqueue(Job(pool, "noop", f"{pool}-5s", defer_ms=5000))
    assert await st.redis.llen(keys.wake(pool)) == 1  # the earliest deferred job: plan again
    await st.queue.enqueue(Job(pool, "noop", f"{pool}-8s", defer_ms=8000))
    assert await st.redis.llen(keys.wake(pool)) == 1  # due after it: nothing to re-plan
    await st.queue.enqueue(Job(pool, "noop", f"{pool}-2s", defer_ms=2000))
    assert await st.redis.llen(keys.wake(pool)) == 2
    await st.queue.enqueue(Job(pool, "noop", f"{pool}-now"))
    assert await st.redis.llen(keys.wake(pool)) == 3


async def test_an_urgent_job_is_taken_before_jobs_already_due(app: Any) -> None:
    st, pool = app.state.sn, _pool()
    for i in range(3):
        await st.queue.enqueue(Job(pool, "noop", f"{pool}-routine-{i}", defer_ms=-5000))  # overdue
    await st.queue.enqueue(Job(pool, "noop", f"{pool}-hook", urgent=True))
    now = int(time.time() * 1000)
    # What arq's worker reads: due ids, lowest score first.
    first = await st.redis.zrangebyscore(keys.queue(pool), "-inf", now, start=0, num=1)
    assert first == [f"{pool}-hook".encode()]
    assert await st.redis.llen(keys.wake(pool)) == 4


async def test_a_deferred_job_starts_when_due_not_at_the_next_poll_tick(app: Any) -> None:
    # poll_delay is 1 s here: a worker that only looks at the queue on wake-ups and ticks
    # starts a job deferred by 0.5 s about 0.5 s late.
    assert app.state.sn.settings.poll_delay_seconds >= 1.0
    w, task = await start_inprocess_worker("poll")
    try:
        late = []
        for _ in range(3):
            jid = f"nosuch-{uuid.uuid4().hex}"
            poll_id = f"{jid}:poll:1"
            due = time.time() + 0.5
            await app.state.sn.queue.enqueue(Job("poll", MEDIA_POLL, poll_id, (jid, 1, False), defer_ms=500))
            for _ in range(100):
                raw = await app.state.sn.redis.get(keys.result_key_prefix + poll_id)
                if raw is not None:
                    break
                await asyncio.sleep(0.05)
            assert raw is not None, "the deferred job never ran"
            late.append(deserialize_result(raw, deserializer=loads).start_time.timestamp() - due)
        assert max(late) < 0.25, late
    finally:
        await stop_inprocess_worker(w, task)
