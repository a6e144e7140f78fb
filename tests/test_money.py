"""Money: exact, never below zero, charged once, refunded once, ledger == balance."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.helpers import CHAT, calls_for

KEYS = {"openrouter_key": "sk-or-v1-race"}


async def test_200_concurrent_calls_on_10_calls_worth(client: httpx.AsyncClient, make_account: MakeAccount,
                                                      chat_worker: Any, app: Any) -> None:
    acct = await make_account(balance="0.20", keys=KEYS)
    # The race under test is the charge's: lift the account's rate and in-flight limits, which
    # would otherwise refuse most of these 200 at once (429) before the charge.
    r = await client.post("/admin/limits", headers={"Authorization": "Bearer test-admin-token"},
                          json={"uid": acct.uid, "rate": {"chat": 0}, "in_flight": {"chat": 0}})
    assert r.status_code == 200, r.text

    async def one(i: int) -> int:
        r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"race {i}"})
        return r.status_code

    codes = await asyncio.gather(*(one(i) for i in range(200)))
    assert codes.count(200) == 10
    assert codes.count(402) == 190
    assert await audit(app, acct.uid) == (0, 0)


async def test_402_says_what_to_do(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account(balance="0.01", keys=KEYS)
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "x"})
    assert r.status_code == 402
    assert "Insufficient balance" in r.json()["error"]


async def test_idempotency_key_replays_and_charges_once(client: httpx.AsyncClient, funded: Account,
                                                        chat_worker: Any, app: Any) -> None:
    key = str(uuid.uuid4())
    body = {"model": "m", "prompt": f"idem {key}"}
    headers = {**funded.headers, "Idempotency-Key": key}
    first = await client.post(CHAT, headers=headers, json=body)
    again = await asyncio.gather(*(client.post(CHAT, headers=headers, json=body) for _ in range(5)))
    assert first.status_code == 200
    assert all(r.status_code == 200 for r in again)
    assert {r.json()["prediction"]["job_id"] for r in [first, *again]} == {first.json()["prediction"]["job_id"]}
    assert len(calls_for(body["prompt"])) == 1
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)
    other = await client.post(CHAT, headers=headers, json={**body, "prompt": "another body"})
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]


async def test_concurrent_first_use_of_an_idempotency_key_charges_once(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    key = str(uuid.uuid4())
    body = {"model": "m", "prompt": f"idem race {key}"}
    rs = await asyncio.gather(*(client.post(CHAT, headers={**funded.headers, "Idempotency-Key": key}, json=body)
                                for _ in range(10)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert len({r.json()["prediction"]["job_id"] for r in rs}) == 1
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_provider_500_on_every_retry_fails_and_refunds(client: httpx.AsyncClient, funded: Account,
                                                             chat_worker: Any, app: Any) -> None:
    prompt = f"doomed {uuid.uuid4()}"
    r = await client.post(CHAT, headers=funded.headers, json={"model": "fail-500", "prompt": prompt})
    assert r.status_code == 502
    body = r.json()
    assert "server had an error" in body["error"]
    assert body["prediction"]["status"] == "failed" and body["prediction"]["cost"] == 0
    assert len(calls_for(prompt)) == 1 + app.state.sn.settings.provider_max_retries
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
    task = (await client.get(f"/tasks/{body['prediction']['id']}", headers=funded.headers)).json()
    assert task["status"] == "failed" and task["cost"] == 0
    history = (await client.get("/billing-history", headers=funded.headers)).json()["history"]
    assert [h["kind"] for h in history[:2]] == ["refund", "charge"]


async def test_provider_429_then_200_completes_charged_once(client: httpx.AsyncClient, funded: Account,
                                                            chat_worker: Any, app: Any) -> None:
    prompt = f"throttled {uuid.uuid4()}"
    r = await client.post(CHAT, headers=funded.headers, json={"model": "flaky-429", "prompt": prompt})
    assert r.status_code == 200, r.text
    assert len(calls_for(prompt)) == 2
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_provider_4xx_fails_at_once_with_its_message(client: httpx.AsyncClient, funded: Account,
                                                           chat_worker: Any, app: Any) -> None:
    prompt = f"bad model {uuid.uuid4()}"
    r = await client.post(CHAT, headers=funded.headers, json={"model": "reject-400", "prompt": prompt})
    assert r.status_code == 400
    assert "invalid model ID" in r.json()["error"]
    assert len(calls_for(prompt)) == 1  # a 4xx is not retried
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_openrouter_error_inside_a_200_is_retried_then_fails(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    prompt = f"routed error {uuid.uuid4()}"
    r = await client.post(CHAT, headers=funded.headers, json={"model": "or-error-200", "prompt": prompt})
    assert r.status_code == 502
    assert "Provider returned error" in r.json()["error"]
    assert len(calls_for(prompt)) > 1
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_admin_credit_moves_money_through_the_ledger(client: httpx.AsyncClient, funded: Account,
                                                           app: Any) -> None:
    admin = {"Authorization": "Bearer test-admin-token"}
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": 1.5, "reason": "x"})
    assert r.json() == {"balance": 6.5}
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": -7})
    assert r.status_code == 400
    r = await client.post("/admin/credit", headers=funded.headers, json={"uid": funded.uid, "amount": 1})
    assert r.status_code == 403
    assert await audit(app, funded.uid) == (6_500_000, 6_500_000)
    assert (await client.get("/balance", headers=funded.headers)).json() == {"balance": 6.5}


async def test_admin_credit_that_rounds_to_no_micro_dollar_is_refused(client: httpx.AsyncClient, funded: Account,
                                                                       app: Any) -> None:
    # 0.0000001 passed the non-zero check, then rounded to 0 micros: a "credit" ledger row of $0.
    admin = {"Authorization": "Bearer test-admin-token"}
    for amount in (0.0000001, -0.0000005, 0):
        r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": amount})
        assert r.status_code == 400 and "at least 0.000001" in r.json()["error"], (amount, r.text)
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": 0.000001})
    assert r.json() == {"balance": 5.000001}
    history = (await client.get("/billing-history", headers=funded.headers)).json()["history"]
    assert [h["amount"] for h in history if h["kind"] == "credit"] == [0.000001]
    assert await audit(app, funded.uid) == (5_000_001, 5_000_001)


async def test_admin_credit_above_int32_micros(client: httpx.AsyncClient, funded: Account, app: Any) -> None:
    # $2,147.48 is 2^31 micro-dollars: the amount parameter was inferred as int4 and such a credit was a 500.
    admin = {"Authorization": "Bearer test-admin-token"}
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": 900_000})
    assert r.status_code == 200, r.text
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": -899_000})
    assert r.json() == {"balance": 1005.0}
    assert await audit(app, funded.uid) == (1_005_000_000, 1_005_000_000)


async def test_one_charge_batch_across_accounts_is_one_by_one_charging(make_account: MakeAccount, app: Any) -> None:
    # The ingress combines charges of many accounts into one statement (storage/tasks.py
    # charge_batch): each account must come out exactly as if its requests were charged in turn.
    from jobs.names import CHAT as KIND
    from storage.charges import NewTask
    from storage.tasks import TaskRepository

    short = await make_account(balance="0.05", keys={"openrouter_key": "sk-or-v1-a"})  # covers 2 of 3
    rich = await make_account(balance="1", keys={"openrouter_key": "sk-or-v1-b"})
    keyless = await make_account(balance="1", keys={})
    price = KIND.price_micros(app.state.sn.settings)
    assert price == 20_000

    def task(uid: str) -> NewTask:
        return NewTask(job_id=str(uuid.uuid4()), uid=uid, kind=KIND.name, pool=KIND.pool, model="m", prompt="p",
                       request={"model": "m", "messages": [{"role": "user", "content": "batch"}]},
                       cost_micros=price, key_name=KIND.key_name)

    order = [short.uid, rich.uid, short.uid, keyless.uid, "no-such-uid", short.uid, rich.uid]
    out = await TaskRepository(app.state.sn.db).charge_batch([task(u) for u in order])
    assert [o.task_id is not None for o in out] == [True, True, True, False, False, False, True]
    assert [(o.account_exists, o.has_key) for o in out[3:5]] == [(True, False), (False, False)]
    assert (out[5].account_exists, out[5].has_key) == (True, True)  # short of balance: 402, not 400
    assert await audit(app, short.uid) == (10_000, 10_000)
    assert await audit(app, rich.uid) == (960_000, 960_000)
    assert await audit(app, keyless.uid) == (1_000_000, 1_000_000)
    # Charged but never enqueued: keep the sweeper of a later test's worker from running them.
    await app.state.sn.db.execute("UPDATE tasks SET status = 'canceled' WHERE uid = ANY($1) AND status = 'queued'",
                                  [short.uid, rich.uid])
