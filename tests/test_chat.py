"""Chat end to end: ingress → ledger → queue → worker → fake provider → status → read back."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.helpers import CHAT, calls_for, poll_until_done


async def test_chat_completion_answers_with_the_reference_shape(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    prompt = f"quantum {uuid.uuid4()}"
    r = await client.post(CHAT, headers=funded.headers, json={
        "uid": funded.uid, "model": "openai/gpt-4o", "max_tokens": 500, "temperature": 0.7,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    p = r.json()["prediction"]
    assert set(p) == {"id", "uid", "output", "cost", "model", "status", "job_id"}
    assert (p["uid"], p["cost"], p["model"], p["status"]) == (funded.uid, 0.02, "openai/gpt-4o", "completed")
    assert p["output"]["choices"][0]["message"]["content"] == f"echo: {prompt}"
    sent = calls_for(prompt)
    assert len(sent) == 1
    # The account's own stored key went to the provider; our uid did not.
    assert sent[0]["auth"] == "Bearer sk-or-v1-test-key-0001"
    assert "uid" not in sent[0]["body"] and sent[0]["body"]["max_tokens"] == 500
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_chatgpt_goes_to_openai_with_the_openai_key(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any) -> None:
    prompt = f"haiku {uuid.uuid4()}"
    r = await client.post("/chatgpt-completion", headers=funded.headers,
                          json={"model": "gpt-4o", "prompt": prompt})
    assert r.status_code == 200, r.text
    assert calls_for(prompt)[0]["auth"] == "Bearer sk-test-0002"
    assert calls_for(prompt)[0]["body"]["messages"] == [{"role": "user", "content": prompt}]


async def test_through_a_real_worker_process(client: httpx.AsyncClient, funded: Account,
                                             worker_process: Any) -> None:
    worker_process("chat")
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "from a process"})
    assert r.status_code == 200, r.text
    assert r.json()["prediction"]["status"] == "completed"


async def test_missing_provider_key_is_400_and_charges_nothing(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account()
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "x"})
    assert r.status_code == 400
    assert "openrouter_key" in r.json()["error"]
    assert await audit(app, acct.uid) == (5_000_000, 5_000_000)


async def test_respond_async_then_poll(client: httpx.AsyncClient, funded: Account, chat_worker: Any) -> None:
    r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "slow-0.3", "prompt": "later"})
    assert r.status_code == 202
    body = r.json()
    assert body["success"] is True and body["status"] == "in_progress"
    assert body["get"] == f"http://gateway.test/prediction-status?job_id={body['job_id']}"
    status = await poll_until_done(client, funded, body["job_id"])
    assert status["replicate_status"] == "completed" and status["updated"] is True
    assert status["output"]["choices"][0]["message"]["content"] == "echo: later"


async def test_sync_timeout_answers_504_with_job_id_and_the_task_still_completes(
        app: Any, funded: Account, chat_worker: Any) -> None:
    from ingress.app import create_app

    slow_app = create_app(app.state.sn.settings.model_copy(update={"sync_timeout_seconds": 0.3}))
    async with slow_app.router.lifespan_context(slow_app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=slow_app), base_url="http://gateway.test") as c:
        r = await c.post(CHAT, headers=funded.headers, json={"model": "slow-1", "prompt": "takes a while"})
        assert r.status_code == 504
        job_id = r.json()["job_id"]
        assert "still running" in r.json()["error"]
        status = await poll_until_done(c, funded, job_id)
    assert status["replicate_status"] == "completed"
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)
