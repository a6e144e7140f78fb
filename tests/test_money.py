"""Money: exact, never below zero, charged once, refunded once, ledger == balance."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.test_chat import CHAT, calls_for

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
    # Past 2^31 micro-dollars ($2,147.48): the amount is a bigint all through the statement.
    r = await client.post("/admin/credit", headers=admin, json={"uid": funded.uid, "amount": 900_000})
    assert r.json() == {"balance": 900_006.5}
    assert await audit(app, funded.uid) == (900_006_500_000, 900_006_500_000)
