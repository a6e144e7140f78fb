"""A webhook's address lookup at submit is work before the charge: only for a caller who can pay,
a few at once per account, bounded in time, on threads of its own; and webhooks have their own
allow list (SYNCNODE_FETCH_ALLOW names hosts for storage and moderation, not for webhooks)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import webhook_receiver as receiver
from tests.fixtures.accounts import MakeAccount
from tests.fixtures.servers import ServerThread
from tests.helpers import KEYS, ROUTES

V1_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"model": "openai/text-embedding-3-small", "input": "hi"}),
    ("/v1/moderations", {"input": "hello"}),
]
ATTACKER = "attacker.example"


class Lookups:
    """socket.getaddrinfo for *.attacker.example: recorded, held until released (a DNS server
    that never answers), then refused; every other host as the OS answers."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.release = threading.Event()
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, *a: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(ATTACKER):
            self.threads.append(threading.current_thread().name)
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self.real(host, *a, **kw)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lookups]:
    fake = Lookups()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()  # no thread of the lookup pool stays held after the test


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    with ServerThread(receiver.app) as srv:
        yield srv.url


@pytest.mark.parametrize(("path", "body"), ROUTES + V1_ROUTES, ids=[p for p, _ in ROUTES + V1_ROUTES])
async def test_an_account_that_cannot_pay_gets_402_before_any_lookup(
        client: httpx.AsyncClient, make_account: MakeAccount, lookups: Lookups,
        path: str, body: dict[str, Any]) -> None:
    broke = await make_account(balance="0.00", keys={**KEYS, "openai_key": "sk-test-0003"})
    rs = await asyncio.gather(*(client.post(path, headers=broke.headers, json={
        **body, "webhook": f"https://n{i}.{ATTACKER}/h"}) for i in range(5)))
    assert [r.status_code for r in rs] == [402] * 5, rs[0].text
    assert lookups.threads == []


async def test_lookups_of_one_account_are_capped(client: httpx.AsyncClient, make_account: MakeAccount,
                                                 lookups: Lookups, app: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "webhook_lookups_per_account", 2)
    monkeypatch.setattr(app.state.sn.settings, "webhook_lookup_timeout_seconds", 60.0)
    acct = await make_account(keys=KEYS)
    flood = [asyncio.create_task(client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                                             json={"model": "m", "prompt": "hi",
                                                   "webhook": f"https://n{i}.{ATTACKER}/h"})) for i in range(6)]
    done: set[asyncio.Task[httpx.Response]] = set()
    for _ in range(300):
        if len(done) >= 4:
            break
        done = {t for t in flood if t.done()}
        await asyncio.sleep(0.05)
    refused = [t.result() for t in done]
    assert len(refused) == 4 and all(r.status_code == 429 for r in refused), [r.status_code for r in refused]
    assert refused[0].headers["retry-after"] == "1"
    lookups.release.set()
    held = await asyncio.gather(*(t for t in flood if t not in done))
    assert [r.status_code for r in held] == [400, 400] and "cannot resolve" in held[0].json()["error"]
    assert len(lookups.threads) == 2
    # The slots were given back: the next lookup runs.
    r = await client.post("/chat-completion", headers=acct.headers, json={
        "model": "m", "prompt": "hi", "webhook": f"https://again.{ATTACKER}/h"})
    assert r.status_code == 400 and "cannot resolve" in r.json()["error"]


async def test_a_lookup_that_never_answers_is_given_up_on_its_own_threads(
        client: httpx.AsyncClient, make_account: MakeAccount, lookups: Lookups, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "webhook_lookup_timeout_seconds", 0.3)
    acct = await make_account(keys=KEYS)
    r = await asyncio.wait_for(client.post("/v1/chat/completions", headers=acct.headers, json={
        **V1_ROUTES[0][1], "webhook": f"https://hang.{ATTACKER}/h"}), timeout=20)
    assert r.status_code == 400 and "no answer within 0.3 s" in r.json()["error"]["message"]
    # Not the loop's default pool, which argon2 sign-ins share.
    assert lookups.threads and all(t.startswith("webhook-dns") for t in lookups.threads)


async def test_the_fetch_allow_list_does_not_let_webhooks_through(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any, receiver_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    hostport = receiver_url.removeprefix("http://")
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", hostport)  # an internal storage host
    acct = await make_account(keys=KEYS)
    for url in (f"{receiver_url}/hook/x", f"https://{hostport}/hook/x"):
        r = await client.post("/chat-completion", headers={**acct.headers, "Prefer": "respond-async"},
                              json={"model": "m", "prompt": "hi", "webhook": url})
        assert r.status_code == 400, r.text
    assert (await client.get("/tasks", headers=acct.headers)).json()["total"] == 0
