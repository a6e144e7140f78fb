"""Completion webhooks end to end: a task with a webhook → trigger → webhooks pool → a receiver
on 127.0.0.1 (let through with SYNCNODE_WEBHOOK_ALLOW) that checks the Standard Webhooks signature."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.fakes import webhook_receiver as receiver
from tests.fixtures.accounts import Account, MakeAccount
from tests.fixtures.media import Sim
from tests.fixtures.servers import ServerThread
from tests.fixtures.workers import WorkerProcess, start_inprocess_worker, stop_inprocess_worker

CHAT_KEYS = {"openrouter_key": "sk-or-v1-test-key-0001"}


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    with ServerThread(receiver.app) as srv:
        yield srv.url


async def start_webhooks_worker(max_jobs: int | None = None) -> tuple[Any, asyncio.Task[None]]:
    from arq.worker import get_kwargs

    from jobs.settings import get_settings
    from workers.runtime.worker import SyncNodeWorker
    from workers.settings import POOL_SETTINGS

    kwargs: dict[str, Any] = get_kwargs(POOL_SETTINGS["webhooks"])
    if max_jobs is not None:
        kwargs["max_jobs"] = max_jobs
    w = SyncNodeWorker(**kwargs, pool_name="webhooks", lease_seconds=get_settings().job_lease_seconds,
                       handle_signals=False)
    task = asyncio.create_task(w.main())
    await asyncio.sleep(0.3)
    return w, task


@pytest.fixture
def hook_settings(app: Any, receiver_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The receiver allowed, fast retries, a 1 s attempt timeout (read when the worker starts)."""
    s = app.state.sn.settings
    monkeypatch.setattr(s, "webhook_allow", receiver_url.removeprefix("http://"))
    monkeypatch.setattr(s, "webhook_backoff_first_seconds", 0.2)
    monkeypatch.setattr(s, "webhook_backoff_cap_seconds", 0.5)
    monkeypatch.setattr(s, "webhook_timeout_seconds", 1.0)
    return s


@pytest.fixture
async def hooks_worker(hook_settings: Any) -> AsyncIterator[Any]:
    w, task = await start_webhooks_worker()
    yield w
    await stop_inprocess_worker(w, task)


def hook_name() -> str:
    return uuid.uuid4().hex[:12]


async def received(name: str, n: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
    for _ in range(int(timeout / 0.05)):
        got = receiver.calls(name)
        if len(got) >= n:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: {len(receiver.calls(name))} of {n} deliveries arrived")


async def secret(client: httpx.AsyncClient, acct: Account) -> str:
    r = await client.get("/webhook-secret", headers=acct.headers)
    assert r.status_code == 200, r.text
    key = str(r.json()["key"])
    assert key.startswith("whsec_")
    return key


async def chat_with_hook(client: httpx.AsyncClient, acct: Account, url: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/chat-completion", headers=acct.headers,
                          json={"model": "m", "prompt": f"hook {uuid.uuid4()}", "webhook": url, **extra})
    assert r.status_code == 200, r.text
    p: dict[str, Any] = r.json()["prediction"]
    return p


async def deliveries(client: httpx.AsyncClient, acct: Account, task_id: int) -> dict[str, Any]:
    r = await client.get(f"/tasks/{task_id}/deliveries", headers=acct.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def settled(client: httpx.AsyncClient, acct: Account, task_id: int, timeout: float = 15) -> dict[str, Any]:
    """The deliveries once none is pending any more."""
    for _ in range(int(timeout / 0.05)):
        body = await deliveries(client, acct, task_id)
        if body["deliveries"] and all(d["state"] != "pending" for d in body["deliveries"]):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries of task {task_id} still pending")


async def test_chat_webhook_is_signed_and_is_the_status_document(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hooks_worker: Any,
        receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    key = await secret(client, acct)
    name = hook_name()
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}", webhook_events_filter=["completed"])
    (call,) = await received(name)
    doc = Webhook(key).verify(call["body"], call["headers"])
    status = await client.get("/prediction-status", params={"job_id": p["job_id"]}, headers=acct.headers)
    assert doc == status.json() and doc["replicate_status"] == "completed"
    assert call["headers"]["webhook-id"].startswith("whevt_")
    with pytest.raises(WebhookVerificationError):  # another account's secret does not verify it
        other = await make_account()
        Webhook(await secret(client, other)).verify(call["body"], call["headers"])
    body = await settled(client, acct, p["id"])
    assert body["webhook"] == f"{receiver_url}/hook/{name}" and body["webhook_events_filter"] == ["completed"]
    (d,) = body["deliveries"]
    assert (d["event"], d["state"]) == ("completed", "delivered")
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in d["attempts"]] == [(1, 200, "delivered")]


async def test_deliveries_are_the_owners_only(client: httpx.AsyncClient, make_account: MakeAccount,
                                              chat_worker: Any, hooks_worker: Any, receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{hook_name()}")
    other = await make_account()
    r = await client.get(f"/tasks/{p['id']}/deliveries", headers=other.headers)
    assert r.status_code == 404
    assert (await client.get(f"/tasks/{p['id']}/deliveries")).status_code == 401
    assert (await client.get("/tasks/999999999/deliveries", headers=acct.headers)).status_code == 404


async def test_fails_twice_then_succeeds_on_the_third_try(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hooks_worker: Any,
        receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    key = await secret(client, acct)
    name = hook_name()
    receiver.SCRIPTS[name] = [500, 429]
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}")
    calls = await received(name, 3)
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1  # one message, retried
    assert all(Webhook(key).verify(c["body"], c["headers"]) for c in calls)
    (d,) = (await settled(client, acct, p["id"]))["deliveries"]
    assert d["state"] == "delivered"
    assert [(a["status_code"], a["outcome"]) for a in d["attempts"]] == [
        (500, "retry"), (429, "retry"), (200, "delivered")]
    await asyncio.sleep(1.0)
    assert len(receiver.calls(name)) == 3


@pytest.mark.parametrize("code", [410, 400, 302])
async def test_a_4xx_or_redirect_stops_retries(client: httpx.AsyncClient, make_account: MakeAccount,
                                               chat_worker: Any, hooks_worker: Any, receiver_url: str,
                                               code: int) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    name = hook_name()
    receiver.SCRIPTS[name] = [code, 200]
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}")
    (d,) = (await settled(client, acct, p["id"]))["deliveries"]
    assert d["state"] == "failed"
    assert [(a["status_code"], a["outcome"]) for a in d["attempts"]] == [(code, "failed")]
    await asyncio.sleep(1.5)  # several backoffs: a retry would have come by now
    assert len(receiver.calls(name)) == 1


async def test_rotated_secret_still_verifies_during_the_overlap(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hooks_worker: Any,
        receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    old = await secret(client, acct)
    assert await secret(client, acct) == old  # created once, then the same
    r = await client.post("/webhook-secret/rotate", headers=acct.headers)
    assert r.status_code == 200, r.text
    new = r.json()["key"]
    assert new != old and r.json()["previous_key"] == old and r.json()["previous_valid_until"]
    name = hook_name()
    await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}")
    (call,) = await received(name)
    assert len(call["headers"]["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(call["body"], call["headers"]) == Webhook(old).verify(call["body"], call["headers"])


async def test_slow_receiver_times_out_and_is_retried_without_delaying_another_account(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hook_settings: Any,
        receiver_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two worker slots, one per account: without the per-account cap the slow account's three
    # hanging attempts would take both slots and the other account would wait a whole timeout.
    monkeypatch.setattr(hook_settings, "webhook_account_concurrency", 1)
    w, task = await start_webhooks_worker(max_jobs=2)
    try:
        slow_acct, fast_acct = await make_account(keys=CHAT_KEYS), await make_account(keys=CHAT_KEYS)
        slow = [hook_name() for _ in range(3)]
        for name in slow:
            receiver.SCRIPTS[name] = [(3.0, 200)]  # first attempt hangs past the 1 s timeout
        slow_tasks = [await chat_with_hook(client, slow_acct, f"{receiver_url}/hook/{n}") for n in slow]
        await received(slow[0])
        fast = hook_name()
        await chat_with_hook(client, fast_acct, f"{receiver_url}/hook/{fast}")
        (fast_call,) = await received(fast)
        first_slow = min(c["arrived"] for n in slow for c in receiver.calls(n))
        # Measured, since isolation is the requirement: it came while the slow one still hung.
        assert fast_call["arrived"] < first_slow + 1.0
        for n, t in zip(slow, slow_tasks, strict=True):
            (d,) = (await settled(client, slow_acct, t["id"], timeout=30))["deliveries"]
            assert d["state"] == "delivered"
            first, *rest = d["attempts"]
            assert first["outcome"] == "retry" and "no answer within 1 s" in first["error"]
            assert rest[-1]["outcome"] == "delivered"
            assert len(receiver.calls(n)) >= 2
    finally:
        await stop_inprocess_worker(w, task)


async def test_delivery_job_is_idempotent(client: httpx.AsyncClient, make_account: MakeAccount,
                                          chat_worker: Any, hooks_worker: Any, receiver_url: str) -> None:
    from workers.webhooks import deliver

    acct = await make_account(keys=CHAT_KEYS)
    name = hook_name()
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}")
    (d,) = (await settled(client, acct, p["id"]))["deliveries"]
    event_id = int(d["id"].removeprefix("whevt_"))
    # arq may run a job twice: a re-run of a finished attempt, or an attempt out of turn, sends nothing.
    assert await deliver(hooks_worker.ctx, event_id, 1) == {"outcome": "duplicate"}
    assert await deliver(hooks_worker.ctx, event_id, 3) == {"outcome": "duplicate"}
    assert len(receiver.calls(name)) == 1


async def test_media_task_webhook_start_and_completed(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any,
        hooks_worker: Any, receiver_url: str) -> None:
    key = await secret(client, replicate_account)
    name = hook_name()
    r = await client.post("/generate", headers=replicate_account.headers, json={
        "model": "black-forest-labs/flux-schnell", "input": {"prompt": "an apple", "sim": {"output": "text"}},
        "webhook": f"{receiver_url}/hook/{name}"})  # default filter: every event
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    calls = await received(name, 2)
    docs = {Webhook(key).verify(c["body"], c["headers"])["replicate_status"]: orjson.loads(c["body"])
            for c in calls}
    assert set(docs) == {"in_progress", "completed"}
    assert docs["in_progress"] == {"job_id": job_id, "replicate_status": "in_progress", "output": None,
                                   "updated": False}
    status = await client.get("/prediction-status", params={"job_id": job_id}, headers=replicate_account.headers)
    assert docs["completed"] == status.json()
    assert docs["completed"]["output"] == "hello from the simulator"


async def test_a_real_webhooks_process_delivers_a_failed_task(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hook_settings: Any,
        receiver_url: str, worker_process: WorkerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCNODE_WEBHOOK_ALLOW", hook_settings.webhook_allow)
    worker_process("webhooks")  # `syncnode worker webhooks`, as the Procfile runs it
    acct = await make_account(keys=CHAT_KEYS)
    key = await secret(client, acct)
    name = hook_name()
    r = await client.post("/chat-completion", headers=acct.headers, json={
        "model": "fail-500", "prompt": "this one fails", "webhook": f"{receiver_url}/hook/{name}"})
    assert r.status_code == 502, r.text
    (call,) = await received(name, timeout=30)
    doc = Webhook(key).verify(call["body"], call["headers"])
    status = await client.get("/prediction-status", params={"job_id": r.json()["job_id"]}, headers=acct.headers)
    assert doc == status.json() and doc["replicate_status"] == "failed" and doc["error"]


async def test_canceling_a_queued_task_sends_completed(
        client: httpx.AsyncClient, make_account: MakeAccount, hooks_worker: Any, receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    key = await secret(client, acct)
    name = hook_name()
    # No chat worker: the task stays queued until the cancel (ingress/cancel.py) ends it.
    r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "never runs", "webhook": f"{receiver_url}/hook/{name}"})
    assert r.status_code == 202, r.text
    (task,) = (await client.get("/tasks", headers=acct.headers)).json()["tasks"]
    assert (await client.post(f"/tasks/{task['id']}/cancel", headers=acct.headers)).status_code == 200
    (call,) = await received(name)
    doc = Webhook(key).verify(call["body"], call["headers"])
    assert doc["replicate_status"] == "canceled" and doc["error"] == "Canceled by the user"


async def test_output_filter_is_sent_on_success_only(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hooks_worker: Any,
        receiver_url: str) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    ok, bad = hook_name(), hook_name()
    p = await chat_with_hook(client, acct, f"{receiver_url}/hook/{ok}", webhook_events_filter=["output"])
    r = await client.post("/chat-completion", headers=acct.headers, json={
        "model": "reject-400", "prompt": "x", "webhook": f"{receiver_url}/hook/{bad}",
        "webhook_events_filter": ["output", "start"]})
    assert r.status_code == 400
    await received(ok)
    (d,) = (await settled(client, acct, p["id"]))["deliveries"]
    assert d["event"] == "output"
    await asyncio.sleep(0.5)
    assert receiver.calls(bad) == []  # a failed chat task has neither output nor a start of its own


async def test_the_worker_guards_the_connection_too(
        client: httpx.AsyncClient, make_account: MakeAccount, hook_settings: Any, receiver_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that passed at submit but is not public when delivered (DNS changed, the operator
    narrowed the allow-list) is never connected to: the guard sits under the worker's client."""
    acct = await make_account(keys=CHAT_KEYS)
    name = hook_name()
    r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "x", "webhook": f"{receiver_url}/hook/{name}"})
    assert r.status_code == 202, r.text
    monkeypatch.setattr(hook_settings, "webhook_allow", "")
    hooks = await start_webhooks_worker()
    chat = await start_inprocess_worker("chat")
    try:
        (task,) = (await client.get("/tasks", headers=acct.headers)).json()["tasks"]
        attempts: list[dict[str, Any]] = []
        for _ in range(600):
            found = (await deliveries(client, acct, task["id"]))["deliveries"]
            attempts = found[0]["attempts"] if found else []
            if len(attempts) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [a["outcome"] for a in attempts[:2]] == ["retry", "retry"]
        assert "loopback" in attempts[0]["error"]
        assert receiver.calls(name) == []
    finally:
        await stop_inprocess_worker(*hooks)
        await stop_inprocess_worker(*chat)


async def test_an_event_nobody_heard_is_delivered_by_the_dispatcher(
        client: httpx.AsyncClient, make_account: MakeAccount, chat_worker: Any, hook_settings: Any,
        receiver_url: str) -> None:
    """No webhooks worker listens when the task ends (all down, or the NOTIFY was lost): the event
    waits in Postgres and the dispatcher enqueues it once it is overdue."""
    acct = await make_account(keys=CHAT_KEYS)
    key = await secret(client, acct)
    name = hook_name()
    await chat_with_hook(client, acct, f"{receiver_url}/hook/{name}")
    await asyncio.sleep(0.5)
    assert receiver.calls(name) == []
    w, task = await start_webhooks_worker()
    try:
        (call,) = await received(name, timeout=30)
        assert Webhook(key).verify(call["body"], call["headers"])["replicate_status"] == "completed"
    finally:
        await stop_inprocess_worker(w, task)
