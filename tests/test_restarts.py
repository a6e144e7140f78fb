"""Redis and Postgres restarting under load, against real processes (issue 11).

Scenarios:
* ``Redis restart, data kept`` / ``Redis restart, data lost``: with 100 accepted jobs queued or
  running, the cluster's Redis stops, and starts again on the same port with its AOF or empty.
  While it is down the ingress answers 503 (not 500, and well inside the sync timeout) and those
  503s cost nothing; every task accepted before ends completed or refunded (the sweeper
  re-enqueues from Postgres what Redis lost); the same worker processes take new work after.
* ``Postgres restart``: while it is down, 503 and nothing charged without a task; after, the
  accepted tasks end completed or refunded and the same workers take new work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
import httpx
import pytest

from tests.fixtures.cluster import CHAT_PATH, Cluster, audit, prompt, submit_async, task_rows, wait_terminal

pytestmark = pytest.mark.slow

# The suite's SYNCNODE_SYNC_TIMEOUT_SECONDS: a 503 must come well before a sync wait would end.
_ANSWER_WITHIN_S = 5.0


async def _calls_while_down(h: httpx.AsyncClient, acct: dict[str, str], what: str) -> None:
    """Sync, async and status calls while a server is down: each a prompt 503 with Retry-After."""
    auth = {"Authorization": acct["Authorization"]}
    for headers in (auth, {**auth, "Prefer": "respond-async"}, {**auth, "Idempotency-Key": prompt("k")}):
        t0 = time.monotonic()
        r = await h.post(CHAT_PATH, headers=headers, json={"model": "m", "prompt": prompt("down")})
        assert time.monotonic() - t0 < _ANSWER_WITHIN_S
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert what in r.json()["error"]


def _settled(rows: list[asyncpg.Record]) -> None:
    """Completed and charged once, or failed and refunded: nothing in between, nothing twice."""
    for r in rows:
        if r["status"] == "completed":
            assert list(r["ledger"]) == ["charge"] and not r["refunded"], dict(r)
        else:
            assert r["status"] == "failed" and list(r["ledger"]) == ["charge", "refund"], dict(r)


async def _works_again(c: Cluster, h: httpx.AsyncClient, acct: dict[str, str], procs: Sequence[object]) -> None:
    """The same worker processes answer a sync call (they reconnected; nothing restarted them)."""
    deadline = time.monotonic() + 30
    while True:
        r = await h.post(CHAT_PATH, headers={"Authorization": acct["Authorization"]},
                         json={"model": "m", "prompt": prompt("after")})
        if r.status_code == 200:
            break
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.5)
    assert r.json()["prediction"]["status"] == "completed"
    for p in c.workers:
        assert p.poll() is None, c.worker_log(p)[-3000:]


@pytest.mark.parametrize("keep_data", [True, False], ids=["data kept", "data lost"])
async def test_redis_restart_under_load(workers: Cluster, keep_data: bool) -> None:
    c = workers
    procs = [c.start_worker("chat", SYNCNODE_CHAT_CONCURRENCY="20") for _ in range(2)]
    acct = c.account()
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as h:
        ids = await submit_async(h, acct, "slow-0.5", [prompt("redis") for _ in range(100)])
        before = await audit(c.pg.dsn, acct["uid"])
        c.stop_redis()
        await _calls_while_down(h, acct, "unavailable")
        r = await h.get("/prediction-status", params={"job_id": ids[-1]},
                        headers={"Authorization": acct["Authorization"]})
        assert r.status_code in (200, 503), r.text  # never a 500
        assert await audit(c.pg.dsn, acct["uid"]) == before  # the 503s cost nothing
        await asyncio.sleep(2)  # workers meet the outage (lease lapses, failing polls)
        c.start_redis(keep_data)
        rows = await wait_terminal(c.pg.dsn, ids, timeout=120)
        _settled(rows)
        assert sum(r["status"] == "completed" for r in rows) >= 50  # the outage did not fail them wholesale
        await _works_again(c, h, acct, procs)
    balance, total = await audit(c.pg.dsn, acct["uid"])
    assert balance == total


async def test_postgres_restart_under_load(workers: Cluster) -> None:
    c = workers
    procs = [c.start_worker("chat", SYNCNODE_CHAT_CONCURRENCY="20") for _ in range(2)]
    acct = c.account()
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as h:
        ids = await submit_async(h, acct, "slow-0.5", [prompt("pg") for _ in range(100)])
        c.pg.stop()
        try:
            await _calls_while_down(h, acct, "database")
            await asyncio.sleep(2)
        finally:
            c.pg.start()
        try:
            rows = await wait_terminal(c.pg.dsn, ids, timeout=40)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{c.worker_log(procs[0])[-3000:]}") from None
        _settled(rows)
        # A job cut off by the shutdown is retried, not failed: Postgres is back well within its tries.
        assert {r["status"] for r in rows} == {"completed"}
        await _works_again(c, h, acct, procs)
    conn = await asyncpg.connect(c.pg.dsn)
    try:
        # Nothing charged without a task: every charge of the account names one of its tasks,
        # and the tasks are exactly the calls that were answered 2xx.
        orphans = await conn.fetchval(
            "SELECT count(*) FROM ledger WHERE uid = $1 AND kind = 'charge' AND task_id IS NULL", acct["uid"])
        all_ids = [r["job_id"] for r in await conn.fetch("SELECT job_id FROM tasks WHERE uid = $1", acct["uid"])]
        _settled(await task_rows(conn, all_ids))
    finally:
        await conn.close()
    assert orphans == 0
    assert len(all_ids) == len(ids) + 1  # the 100 accepted and the one after: no task from a 503
    balance, total = await audit(c.pg.dsn, acct["uid"])
    assert balance == total


@pytest.mark.parametrize(("error", "retried"), [
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
    (asyncpg.exceptions.OperatorInterventionError("terminating connection due to administrator command"), True),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    # asyncpg's client-side DataError has this shape (an InterfaceError and a ValueError).
    (type("ArgumentError", (asyncpg.InterfaceError, ValueError), {})("invalid input for query argument $2"), False),
    (asyncpg.exceptions.DataError("value too long"), False),  # the server's: a statement error
    (ValueError("unrelated"), False),
])
def test_what_counts_as_our_infrastructure_being_down(error: BaseException, retried: bool) -> None:
    """What a restart throws is retried later (worker jobs, the poll chain's completion); what the
    statement itself got wrong is not: no retry cures it."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.runner import infrastructure

    assert infrastructure(error) is retried
    assert infrastructure(RedisConnectionError("Connection reset by peer"))
