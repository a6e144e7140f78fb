"""Fairness: one account flooding the chat pool does not starve another.

Account A sends 2,000 async chat calls (Prefer: respond-async) as fast as 10 connections allow
while account B sends 20 sync calls, 4 at a time; B's median latency stays within 3× of its median on an
idle pool, measured in the same test. What makes it true is A's limit of tasks in flight on the
pool (A's rate limit is off here): A holds at most 4 of the worker's 10 slots, so B's jobs
never queue behind A's. Without that limit A's ~2,000 jobs queue ahead of B's and B waits
for them: with A's limit off, B's calls time out (504) behind A's backlog.

The worker and the fake provider run as processes of their own, the provider answering after
0.2 s, so the pool is really busy.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobs import keys
from storage.embedded import free_port
from tests.fixtures.accounts import Account, MakeAccount, audit

CHAT = "/chat-completion"
ADMIN = {"Authorization": "Bearer test-admin-token"}
KEYS = {"openrouter_key": "sk-or-v1-fair-0001"}
POOL_SLOTS = 10
A_IN_FLIGHT = 4


@pytest.fixture
async def busy_pool(app: Any) -> AsyncIterator[None]:
    """A chat worker of POOL_SLOTS slots whose provider answers after 0.2 s, each in its own process."""
    port = free_port()
    env = dict(os.environ, FAKE_PROVIDER_RECORD="0")
    fake = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.fakes.chat_provider:app", "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.update(SYNCNODE_OPENROUTER_BASE_URL=f"http://127.0.0.1:{port}", SYNCNODE_CHAT_CONCURRENCY=str(POOL_SLOTS),
               SYNCNODE_LOG_LEVEL="WARNING")
    worker = subprocess.Popen([sys.executable, "-m", "ingress.cli", "worker", "chat"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _ready(app, port)
        yield
    finally:
        for p in (worker, fake):
            p.kill()
            p.wait()


async def _ready(app: Any, port: int) -> None:
    redis = app.state.sn.redis
    async with httpx.AsyncClient(timeout=1) as c:
        for _ in range(300):
            alive = [k async for k in redis.scan_iter(match=keys.worker_health("chat", "*"))]
            try:
                up = (await c.get(f"http://127.0.0.1:{port}/_calls")).status_code == 200
            except httpx.HTTPError:
                up = False
            if alive and up:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the chat worker or the fake provider did not come up")


async def _sync_calls(client: httpx.AsyncClient, b: Account, n: int, conns: int = 4) -> list[float]:
    """``n`` sync calls, ``conns`` at a time; how long each took."""
    took: list[float] = []
    todo = iter(range(n))

    async def caller() -> None:
        for i in todo:
            t0 = time.perf_counter()
            r = await client.post(CHAT, headers=b.headers, json={"model": "slow-0.2", "prompt": f"b{i} {uuid.uuid4()}"})
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text

    await asyncio.gather(*(caller() for _ in range(conns)))
    return took


async def _flood(client: httpx.AsyncClient, a: Account, until: asyncio.Event, conns: int,
                 most: int = 20_000) -> Counter[int]:
    """A's calls, ``conns`` at a time, until ``until`` is set (a count would end sooner on a faster
    machine than B's calls do, and measure nothing); ``most`` bounds a run that never is."""
    todo = iter(range(most))
    statuses: Counter[int] = Counter()
    hdrs = {**a.headers, "Prefer": "respond-async"}

    async def sender() -> None:
        for i in todo:
            if until.is_set():
                return
            r = await client.post(CHAT, headers=hdrs, json={"model": "slow-0.2", "prompt": f"a{i}"})
            statuses[r.status_code] += 1

    await asyncio.gather(*(sender() for _ in range(conns)))
    return statuses


async def test_a_flooding_account_does_not_starve_another(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any, busy_pool: None) -> None:
    a = await make_account(balance="100.00", keys=KEYS)
    b = await make_account(keys=KEYS)
    r = await client.post("/admin/limits", headers=ADMIN,
                          json={"uid": a.uid, "rate": {"chat": 0}, "in_flight": {"chat": A_IN_FLIGHT}})
    assert r.status_code == 200, r.text

    idle = statistics.median(await _sync_calls(client, b, 20))

    done = asyncio.Event()
    flood = asyncio.create_task(_flood(client, a, done, conns=10))
    await asyncio.sleep(0.3)  # A's flood has filled its share of the pool
    busy_calls = await _sync_calls(client, b, 20)
    still_flooding = not flood.done()
    done.set()
    statuses = await flood
    busy = statistics.median(busy_calls)
    print(f"\nB's p50: idle pool {idle * 1000:.0f} ms, during A's flood {busy * 1000:.0f} ms "
          f"({busy / idle:.2f}×); A's answers: {dict(statuses)}")

    assert still_flooding, "A's flood ended before B's calls did: the test measured nothing"
    assert statuses[202] > 0 and statuses[429] > 0
    assert set(statuses) <= {202, 429}
    assert busy <= 3 * idle
    # Every refused call was free: A paid for exactly the calls that were accepted.
    charged = await app.state.sn.db.fetchval("SELECT count(*) FROM ledger WHERE uid = $1 AND kind = 'charge'", a.uid)
    assert charged == statuses[202]
    balance, total = await audit(app, a.uid)
    assert balance == total
    # A's last accepted tasks finish before the worker goes (nothing left queued for other tests).
    for _ in range(200):
        if not await app.state.sn.redis.zcard(keys.in_flight("chat", a.uid)):
            break
        await asyncio.sleep(0.05)
