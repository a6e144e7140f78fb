"""One account cannot see, cancel or configure another's media tasks and storage."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.helpers import generate


async def test_another_accounts_media_task_is_404(client: httpx.AsyncClient, replicate_account: Account,
                                                  make_account: MakeAccount, app: Any) -> None:
    other = await make_account(keys={"replicate_key": f"r8_{secrets.token_hex(12)}"})
    job = await generate(client, replicate_account, "owner/model", {})  # no worker: stays queued
    task_id = await app.state.sn.db.fetchval("SELECT id FROM tasks WHERE job_id = $1", job)
    for path in ("/prediction-status", "/face-swap/status"):
        r = await client.get(path, params={"job_id": job}, headers=other.headers)
        assert r.status_code == 404 and "error" in r.json(), r.text
    r = await client.post(f"/tasks/{task_id}/cancel", headers=other.headers)
    assert r.status_code == 404 and "error" in r.json(), r.text
    assert await app.state.sn.queue.state(job) == "active"  # untouched
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)
    # Its owner still can.
    r = await client.post(f"/tasks/{task_id}/cancel", headers=replicate_account.headers)
    assert r.status_code == 200 and r.json()["refunded"] is True


async def test_storage_is_per_account(client: httpx.AsyncClient, replicate_account: Account,
                                      make_account: MakeAccount, bunny_url: str, allow_local: Any) -> None:
    allow_local(bunny_url)
    other = await make_account()
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "bunny", "storage_zone": "sn-zone", "access_key": "bunny-zone-password",
        "region_host": bunny_url, "pull_zone_url": "https://sn.b-cdn.net"})
    assert r.status_code == 200, r.text
    assert (await client.get("/storage", headers=other.headers)).json() == {"provider": "default"}
    # Naming the other account's uid is refused, reading and writing.
    r = await client.get("/storage", params={"uid": replicate_account.uid}, headers=other.headers)
    assert r.status_code == 403 and "error" in r.json()
    r = await client.post("/storage", headers=other.headers,
                          json={"uid": replicate_account.uid, "provider": "default"})
    assert r.status_code == 403 and "error" in r.json()
    assert (await client.get("/storage", headers=replicate_account.headers)).json()["provider"] == "bunny"


async def test_a_task_is_reached_by_the_job_id_its_submit_answered(
        client: httpx.AsyncClient, replicate_account: Account, make_account: MakeAccount, app: Any) -> None:
    # /generate answers with the job_id only; /tasks/{id}, its cancel and deliveries took the
    # numeric id alone, so its caller had to list every task to find it.
    other = await make_account(keys={"replicate_key": f"r8_{secrets.token_hex(12)}"})
    job = await generate(client, replicate_account, "owner/model", {})  # no worker: stays queued
    task_id = await app.state.sn.db.fetchval("SELECT id FROM tasks WHERE job_id = $1", job)
    for path in (f"/tasks/{job}", f"/tasks/{job}/deliveries"):
        assert (await client.get(path, headers=other.headers)).status_code == 404
        r = await client.get(path, headers=replicate_account.headers)
        assert r.status_code == 200, r.text
        assert r.json().get("id", r.json().get("task_id")) == task_id
    for method, path in (("POST", f"/tasks/{job}/cancel"), ("DELETE", f"/tasks/{job}")):
        assert (await client.request(method, path, headers=other.headers)).status_code == 404
    r = await client.post(f"/tasks/{job}/cancel", headers=replicate_account.headers)
    assert r.status_code == 200 and r.json()["id"] == task_id and r.json()["refunded"] is True
    r = await client.delete(f"/tasks/{job}", headers=replicate_account.headers)
    assert r.status_code == 200 and r.json() == {"deleted": True, "id": task_id}
    assert (await client.get(f"/tasks/{job}", headers=replicate_account.headers)).status_code == 404
    for bad in ("abc", "1" * 19, job.upper(), "+1"):
        assert (await client.get(f"/tasks/{bad}", headers=replicate_account.headers)).status_code == 404
