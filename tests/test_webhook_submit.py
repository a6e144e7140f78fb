"""Webhook targets are checked at submit: a refused one is a 400, charges nothing, is never called."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import webhook_receiver as receiver
from tests.fixtures.accounts import MakeAccount, audit
from tests.fixtures.servers import ServerThread
from tests.helpers import KEYS, ROUTES


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    with ServerThread(receiver.app) as srv:
        yield srv.url


async def tasks_of(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    r = await client.get("/tasks", headers=headers)
    return int(r.json()["total"])


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
async def test_loopback_webhook_is_refused_at_submit(client: httpx.AsyncClient, make_account: MakeAccount,
                                                     receiver_url: str, app: Any,
                                                     path: str, body: dict[str, Any]) -> None:
    assert app.state.sn.settings.webhook_allow == ""  # no allow-list here
    acct = await make_account(keys=KEYS)
    before = await audit(app, acct.uid)
    name = uuid.uuid4().hex[:12]
    port = receiver_url.rsplit(":", 1)[1]
    for url in (f"https://localhost:{port}/hook/{name}", f"https://127.0.0.1:{port}/hook/{name}"):
        r = await client.post(path, headers=acct.headers, json={**body, "webhook": url})
        assert r.status_code == 400, r.text
        assert "webhook" in r.json()["error"] and "loopback" in r.json()["error"]
    assert await audit(app, acct.uid) == before
    assert await tasks_of(client, acct.headers) == 0
    await asyncio.sleep(0.5)
    assert receiver.calls(name) == []


@pytest.mark.parametrize(("webhook", "events", "says"), [
    ("http://example.com/hook", None, "https"),
    ("https://169.254.169.254/latest/meta-data", None, "link-local"),
    ("https://10.0.0.8/hook", None, "private"),
    ("https://[::ffff:127.0.0.1]/hook", None, "loopback"),
    ("https://user:pw@example.com/hook", None, "user name"),
    ("ftp://example.com/hook", None, "https"),
    ("not a url", None, "webhook"),
    ("https://" + "a" * 2100 + ".com/", None, "2048"),
    (12, None, "https URL"),
    ("https://example.com/hook", ["finished"], "unknown event 'finished'"),
    ("https://example.com/hook", [], "non-empty list"),
    ("https://example.com/hook", "completed", "non-empty list"),
    (None, ["completed"], "needs a webhook"),
])
async def test_bad_webhook_fields_are_400(client: httpx.AsyncClient, make_account: MakeAccount, app: Any,
                                          webhook: Any, events: Any, says: str) -> None:
    acct = await make_account(keys=KEYS)
    before = await audit(app, acct.uid)
    body: dict[str, Any] = {"model": "m", "prompt": "hi", "webhook": webhook}
    if events is not None:
        body["webhook_events_filter"] = events
    r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"}, json=body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]
    assert await audit(app, acct.uid) == before


async def test_http_is_allowed_only_for_allow_listed_hosts(client: httpx.AsyncClient, make_account: MakeAccount,
                                                           app: Any, receiver_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    acct = await make_account(keys=KEYS)
    url = f"{receiver_url}/hook/x"
    r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "hi", "webhook": url})
    assert r.status_code == 400 and "SYNCNODE_WEBHOOK_ALLOW" in r.json()["error"]
    monkeypatch.setattr(app.state.sn.settings, "webhook_allow", receiver_url.removeprefix("http://"))
    r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "hi", "webhook": url,
                                "webhook_events_filter": ["completed", "start"]})
    assert r.status_code == 202, r.text
    (task,) = (await client.get("/tasks", headers=acct.headers)).json()["tasks"]
    d = (await client.get(f"/tasks/{task['id']}/deliveries", headers=acct.headers)).json()
    assert d["webhook"] == url and d["webhook_events_filter"] == ["start", "completed"]


async def test_the_webhook_is_part_of_the_idempotency_key(client: httpx.AsyncClient,
                                                          make_account: MakeAccount) -> None:
    acct = await make_account(keys=KEYS)
    headers = {**acct.headers, "Prefer": "respond-async", "Idempotency-Key": uuid.uuid4().hex}
    body = {"model": "m", "prompt": "hi"}
    r1 = await client.post("/chat-completion", headers=headers, json=body)
    assert r1.status_code == 202
    r2 = await client.post("/chat-completion", headers=headers, json={**body, "webhook": "https://93.184.216.34/h"})
    assert r2.status_code == 409


async def test_secret_routes_need_a_credential(client: httpx.AsyncClient) -> None:
    assert (await client.get("/webhook-secret")).status_code == 401
    assert (await client.post("/webhook-secret/rotate")).status_code == 401
