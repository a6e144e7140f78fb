"""What is settled by the time a synchronous answer arrives: the worker's one final script gives
the task's in-flight slot back and writes its final status before it wakes the waiting request."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from jobs import keys
from tests.fixtures.accounts import MakeAccount, audit
from tests.helpers import CHAT

ADMIN = {"Authorization": "Bearer test-admin-token"}


async def test_a_sync_answer_arrives_with_its_slot_free_and_its_status_final(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any, chat_worker: Any) -> None:
    acct = await make_account(keys={"openrouter_key": "sk-or-v1-answer-path"})
    r = await client.post("/admin/limits", headers=ADMIN, json={"uid": acct.uid, "in_flight": {"chat": 1}})
    assert r.status_code == 200, r.text
    redis = app.state.sn.redis
    for i in range(3):  # at a limit of one, each call finds the slot of the one before it free
        r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"path {i} {uuid.uuid4()}"})
        assert r.status_code == 200, r.text
        job_id = r.json()["prediction"]["job_id"]
        assert await redis.zcard(keys.in_flight("chat", acct.uid)) == 0
        assert (await app.state.sn.status.read(job_id))["status"] == "completed"
    balance, total = await audit(app, acct.uid)
    assert balance == total
