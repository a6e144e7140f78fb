"""Accounts, provider keys (encrypted, masked), tasks listing and deletion."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import Account, MakeAccount
from tests.helpers import CHAT

ADMIN = {"Authorization": "Bearer test-admin-token"}


async def test_post_accounts_needs_admin_or_open_signup(client: httpx.AsyncClient) -> None:
    r = await client.post("/accounts", json={"email": "a@example.com"})
    assert r.status_code == 403
    r = await client.post("/accounts", headers=ADMIN, json={"email": "a@example.com"})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"uid", "api_key", "balance"} and body["balance"] == 5.0
    me = {"Authorization": f"Bearer {body['api_key']}"}
    assert (await client.get("/balance", headers=me)).json() == {"balance": 5.0}
    r = await client.post("/accounts", headers=ADMIN)
    assert r.status_code == 201


async def test_api_keys_are_stored_encrypted_and_shown_masked(client: httpx.AsyncClient,
                                                              make_account: MakeAccount, app: Any) -> None:
    acct = await make_account()
    secret = "sk-or-v1-0123456789abcdefa1b2"
    r = await client.post("/api-keys", headers=acct.headers, json={"uid": acct.uid, "openrouter_key": secret})
    assert r.status_code == 200
    shown = (await client.get("/api-keys", headers=acct.headers)).json()
    assert set(shown) == {"openrouter_key", "chatgpt_key", "replicate_key", "huggingface_key"}
    assert shown["openrouter_key"] == "sk-or-…a1b2" and shown["chatgpt_key"] is None
    stored = await app.state.sn.db.fetchval(
        "SELECT ciphertext FROM provider_keys WHERE uid = $1 AND name = 'openrouter_key'", acct.uid)
    assert secret.encode() not in bytes(stored)
    assert app.state.sn.box.decrypt(bytes(stored)) == secret
    r = await client.post("/api-keys", headers=acct.headers, json={"openrouter_key": None})
    assert r.json()["openrouter_key"] is None


async def test_api_keys_bad_input(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.post("/api-keys", headers=funded.headers, json={"github_key": "x"})
    assert r.status_code == 400 and "github_key" in r.json()["error"]
    r = await client.post("/api-keys", headers=funded.headers, json={"openrouter_key": 12})
    assert r.status_code == 400 and "openrouter_key" in r.json()["error"]
    r = await client.post("/api-keys", headers=funded.headers, json={})
    assert r.status_code == 400
    r = await client.post("/api-keys", json={"openrouter_key": "sk-x"})
    assert r.status_code == 401


async def test_api_keys_are_stored_hashed(app: Any, funded: Account) -> None:
    rows = await app.state.sn.db.fetch("SELECT key_hash, prefix FROM api_keys WHERE uid = $1", funded.uid)
    assert len(rows) == 1 and funded.api_key.encode() not in bytes(rows[0]["key_hash"])


async def test_tasks_listing_pagination_and_delete(client: httpx.AsyncClient, funded: Account,
                                                   chat_worker: Any) -> None:
    for i in range(3):
        r = await client.post(CHAT, headers=funded.headers, json={"model": "openai/gpt-4o", "prompt": f"p{i}"})
        assert r.status_code == 200
    page = (await client.get("/tasks", headers=funded.headers, params={"page": 1, "size": 2})).json()
    assert page["page"] == 1 and page["size"] == 2 and page["total"] == 3
    first = page["tasks"][0]
    assert set(first) == {"id", "job_id", "kind", "model", "prompt", "status", "cost", "created_at"}
    assert first["prompt"] == "p2" and first["status"] == "completed" and first["cost"] == 0.02
    page2 = (await client.get("/tasks", headers=funded.headers, params={"page": 2, "size": 2})).json()
    assert [t["prompt"] for t in page2["tasks"]] == ["p0"]
    one = (await client.get(f"/tasks/{first['id']}", headers=funded.headers)).json()
    assert one["output"]["choices"][0]["message"]["content"] == "echo: p2"
    r = await client.delete(f"/tasks/{first['id']}", headers=funded.headers)
    assert r.status_code == 200
    assert (await client.get(f"/tasks/{first['id']}", headers=funded.headers)).status_code == 404
    assert (await client.get("/tasks", headers=funded.headers)).json()["total"] == 2


async def test_deleting_a_task_in_progress_is_409(client: httpx.AsyncClient, funded: Account) -> None:
    # No worker runs: the task stays queued.
    r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "queued"})
    job_id = r.json()["job_id"]
    status = (await client.get("/prediction-status", params={"job_id": job_id}, headers=funded.headers)).json()
    assert status == {"job_id": job_id, "replicate_status": "in_progress", "output": None, "updated": False}
    task_id = (await client.get("/tasks", headers=funded.headers)).json()["tasks"][0]["id"]
    r = await client.delete(f"/tasks/{task_id}", headers=funded.headers)
    assert r.status_code == 409


async def test_billing_threshold_and_card_features(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.get("/billing-threshold", headers=funded.headers)
    assert r.json() == {"threshold": 50.0, "recharge_below": 0.01, "enabled": False, "card_on_file": False,
                        "failures": 0, "disabled_reason": None}
    r = await client.post("/billing-threshold", headers=funded.headers, json={"threshold": 25})
    assert r.status_code == 200 and r.json()["threshold"] == 25.0
    assert (await client.get("/billing-threshold", headers=funded.headers)).json()["threshold"] == 25.0
    for bad in ({"threshold": 0}, {"threshold": "x"}, {"threshold": True}, {}):
        r = await client.post("/billing-threshold", headers=funded.headers, json=bad)
        assert r.status_code == 400 and "threshold" in r.json()["error"]
    # Stripe is configured in the test session (localstripe): no card yet is a 404 / 402.
    r = await client.get("/card", headers=funded.headers)
    assert r.status_code == 404 and r.json() == {"error": "No card on file"}
    r = await client.post("/topup_card", headers=funded.headers, json={"amount": 10})
    assert r.status_code == 402 and "No card on file" in r.json()["error"]
    assert (await client.get("/card")).status_code == 401


@pytest.mark.parametrize("value", ["sk-or-v1-abc\ndef", "sk-or-v1-\u00e9t\u00e9", "sk\x7f", "sk-\tx"])
async def test_provider_keys_must_be_printable_ascii(value: str, client: httpx.AsyncClient,
                                                     make_account: MakeAccount) -> None:
    acct = await make_account()
    r = await client.post("/api-keys", headers=acct.headers, json={"openrouter_key": value})
    assert r.status_code == 400 and "printable ASCII" in r.json()["error"], r.text
