"""GET /metrics after real traffic: every family an operator's dashboard uses, with sane values."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from jobs import keys
from jobs.metrics import LEDGER
from jobs.queue import Job
from tests.fixtures.accounts import Account, MakeAccount
from tests.helpers import CHAT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
POOL = "ops-test"  # a queue of its own: other tests' leftovers cannot move its numbers


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return parse(r.text)


@pytest.fixture
def test_pool(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(keys, "POOLS", (*keys.POOLS, POOL))
    return app.state.sn.redis


async def _flush(worker: Any) -> None:
    await worker.ctx["sn"].metrics.flush(worker.ctx["sn"].redis)


async def test_job_outcomes_latency_wait_and_provider_errors(client: httpx.AsyncClient, funded: Account,
                                                             chat_worker: Any, app: Any) -> None:
    # Jobs earlier tests left queued run on this worker too: let them finish before counting.
    redis = app.state.sn.redis
    for _ in range(300):
        if not await redis.zcard(keys.queue("chat")) and not chat_worker.job_counter:
            break
        await asyncio.sleep(0.05)
    await _flush(chat_worker)
    before = await scrape(client)
    for model in ("m", "m", "reject-400"):
        await client.post(CHAT, headers=funded.headers, json={"model": model, "prompt": "counted"})
    after = before

    def grew(name: str, **labels: str) -> float:
        return after.get((name, frozenset(labels.items())), 0.0) - before.get((name, frozenset(labels.items())), 0.0)

    # A job is counted as it ends, just after its answer went out: wait for the third.
    for _ in range(100):
        await _flush(chat_worker)
        after = await scrape(client)
        if grew("syncnode_job_duration_seconds_count", pool="chat", function="chat.openrouter") >= 3:
            break
        await asyncio.sleep(0.02)

    assert grew("syncnode_jobs_total", pool="chat", function="chat.openrouter", outcome="completed") == 2
    assert grew("syncnode_jobs_total", pool="chat", function="chat.openrouter", outcome="failed") == 1
    assert grew("syncnode_provider_errors_total", provider="OpenRouter", status="400") == 1
    assert grew("syncnode_job_duration_seconds_count", pool="chat", function="chat.openrouter") == 3
    assert grew("syncnode_job_duration_seconds_sum", pool="chat", function="chat.openrouter") > 0
    assert grew("syncnode_job_wait_seconds_count", pool="chat") >= 3
    inf = value(after, "syncnode_job_duration_seconds_bucket", pool="chat", function="chat.openrouter", le="+Inf")
    assert inf == value(after, "syncnode_job_duration_seconds_count", pool="chat", function="chat.openrouter")
    assert value(after, "syncnode_http_requests_total", route=CHAT, method="POST", status="200") >= 2


async def test_queue_depth_deferred_oldest_age_and_dead_letters(client: httpx.AsyncClient, app: Any,
                                                               test_pool: Any) -> None:
    queue, redis = app.state.sn.queue, test_pool
    ids = [f"ops-{uuid.uuid4().hex}" for _ in range(4)]
    await queue.enqueue(Job(POOL, "nothing.runs.this", ids[0], ("a",)))
    await queue.enqueue(Job(POOL, "nothing.runs.this", ids[1], ("b",), defer_ms=600_000))
    # An urgent job is scored 10 minutes before its enqueue (jobs/queue.py): its wait is still ~0.
    await queue.enqueue(Job(POOL, "nothing.runs.this", ids[2], ("c",), urgent=True))
    # A job a worker holds is running, not waiting, however old its score.
    await redis.zadd(keys.queue(POOL), {ids[3]: int(time.time() * 1000) - 3_600_000})
    await redis.set(keys.in_progress_key_prefix + ids[3], b"1", px=60_000)
    await redis.rpush(f"syncnode:dead:{POOL}", b"{}", b"{}", b"{}")
    try:
        await asyncio.sleep(0.5)
        s = await scrape(client)
        assert value(s, "syncnode_queue_depth", pool=POOL) == 4
        assert value(s, "syncnode_queue_deferred", pool=POOL) == 1
        age = value(s, "syncnode_queue_oldest_age_seconds", pool=POOL)
        assert 0.5 <= age < 30, age
        assert value(s, "syncnode_dead_letters", pool=POOL) == 3
        await redis.delete(f"syncnode:dead:{POOL}")
        await redis.zadd(f"syncnode:dead:{POOL}", {b"x": 1, b"y": 2})  # a ZSET reads as well as a LIST
        await queue.remove(POOL, ids[0])
        s = await scrape(client)
        assert value(s, "syncnode_dead_letters", pool=POOL) == 2
        assert value(s, "syncnode_queue_oldest_age_seconds", pool=POOL) < 5  # the urgent one: not 600 s
        for pool in keys.POOLS:
            depth = value(s, "syncnode_queue_depth", pool=pool)
            assert depth >= value(s, "syncnode_queue_deferred", pool=pool) >= 0
            assert value(s, "syncnode_queue_oldest_age_seconds", pool=pool) >= 0
    finally:
        await redis.delete(keys.queue(POOL), f"syncnode:dead:{POOL}", keys.in_progress_key_prefix + ids[3],
                           *(keys.job_key_prefix + i for i in ids))


async def test_an_empty_queue_waits_for_nothing(client: httpx.AsyncClient, test_pool: Any) -> None:
    s = await scrape(client)
    assert value(s, "syncnode_queue_depth", pool=POOL) == 0
    assert value(s, "syncnode_queue_oldest_age_seconds", pool=POOL) == 0
    assert value(s, "syncnode_dead_letters", pool=POOL) == 0


async def test_ledger_totals_are_exact_and_cached(client: httpx.AsyncClient, app: Any,
                                                  make_account: MakeAccount) -> None:
    st = app.state.sn
    await st.redis.delete(LEDGER)
    s = await scrape(client)
    kinds = {dict(k[1])["kind"] for k in s if k[0] == "syncnode_ledger_amount_dollars"}
    assert "grant" in kinds or "credit" in kinds, kinds
    total = sum(v for k, v in s.items() if k[0] == "syncnode_ledger_amount_dollars")
    balances = await st.db.fetchval("SELECT coalesce(sum(balance_micros), 0) FROM accounts")
    assert round(total * 1_000_000) == balances  # balance = Σ ledger, seen through /metrics
    rows = sum(v for k, v in s.items() if k[0] == "syncnode_ledger_entries_total")
    assert rows == await st.db.fetchval("SELECT count(*) FROM ledger")
    await make_account()  # one more ledger row; the scrape within the cache period does not query
    cached = await scrape(client)
    assert sum(v for k, v in cached.items() if k[0] == "syncnode_ledger_entries_total") == rows
    await st.redis.delete(LEDGER)
    fresh = await scrape(client)
    assert sum(v for k, v in fresh.items() if k[0] == "syncnode_ledger_entries_total") == rows + 1


async def test_rate_limited_counter_and_token(client: httpx.AsyncClient, app: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress.metrics import rate_limited

    before = (await scrape(client)).get(("syncnode_rate_limited_total", frozenset({("group", "chat")})), 0.0)
    rate_limited("chat")
    monkeypatch.setattr(app.state.sn.settings, "metrics_token", SecretStr("scrape-me"))
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer scrape-mf"})).status_code == 401
    s = await scrape(client, Authorization="Bearer scrape-me")
    assert value(s, "syncnode_rate_limited_total", group="chat") == before + 1
