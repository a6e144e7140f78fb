"""Saving cards: limited per account and per client address (card testing), and never a
consent to auto-recharge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import MakeAccount
from tests.fixtures.stripe import DECLINED_AT_ATTACH, VISA, StripeAdmin


@pytest.fixture
async def limited(app: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """A client from its own address, with the production limits (the session lifts the
    per-address ones: every other test comes from 127.0.0.1)."""
    s = app.state.sn.settings
    monkeypatch.setattr(s, "card_attach_max_per_account", 5)
    monkeypatch.setattr(s, "card_attach_max_per_address", 8)
    monkeypatch.setattr(s, "card_setup_max_per_account", 3)
    monkeypatch.setattr(s, "card_setup_max_per_address", 40)
    async with _from_own_address(app) as c:
        yield c


def _from_own_address(app: Any) -> httpx.AsyncClient:
    address = f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30)


async def _attach(client: httpx.AsyncClient, stripe_admin: StripeAdmin, headers: dict[str, str],
                  number: str) -> httpx.Response:
    pm = await stripe_admin.card(number)
    return await client.post("/card", headers=headers, json={"payment_method": pm})


async def test_card_saves_are_limited_per_account_declines_counted(
        limited: httpx.AsyncClient, make_account: MakeAccount, stripe_admin: StripeAdmin) -> None:
    acct = await make_account()
    codes = [(await _attach(limited, stripe_admin, acct.headers, DECLINED_AT_ATTACH if i % 2 else VISA)).status_code
             for i in range(5)]
    assert codes == [200, 402, 200, 402, 200]
    r = await _attach(limited, stripe_admin, acct.headers, VISA)
    assert r.status_code == 429 and r.json()["error"].startswith("Too many card saves: at most 5 in 24 h")
    assert 86_000 < int(r.headers["Retry-After"]) <= 86_400
    # The card saved last is still the one on file; the refused attempt never reached Stripe.
    assert (await limited.get("/card", headers=acct.headers)).json()["last4"] == "4242"


async def test_card_saves_are_limited_per_address_across_accounts(
        limited: httpx.AsyncClient, make_account: MakeAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    accounts = [await make_account() for _ in range(3)]
    codes = [(await _attach(limited, stripe_admin, a.headers, DECLINED_AT_ATTACH)).status_code
             for a in accounts for _ in range(3)]
    assert codes == [402] * 8 + [429]
    # Another address is not held back by this one.
    async with _from_own_address(app) as elsewhere:
        assert (await _attach(elsewhere, stripe_admin, accounts[2].headers, VISA)).status_code == 200


async def test_concurrent_card_saves_cannot_pass_one_check_together(
        limited: httpx.AsyncClient, make_account: MakeAccount, stripe_admin: StripeAdmin) -> None:
    acct = await make_account()
    pms = [await stripe_admin.card(DECLINED_AT_ATTACH) for _ in range(12)]
    rs = await asyncio.gather(*(limited.post("/card", headers=acct.headers, json={"payment_method": pm})
                                for pm in pms))
    codes = sorted(r.status_code for r in rs)
    assert codes == [402] * 5 + [429] * 7


async def test_card_setups_are_limited_too(limited: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account()
    codes = [(await limited.post("/card/setup", headers=acct.headers, json={})).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = await limited.post("/card/setup", headers=acct.headers)
    assert r.status_code == 429 and "Too many card setups" in r.json()["error"] and r.headers["Retry-After"]


async def test_bad_input_is_refused_before_it_counts(limited: httpx.AsyncClient, make_account: MakeAccount,
                                                     stripe_admin: StripeAdmin) -> None:
    acct = await make_account()
    for _ in range(8):
        r = await limited.post("/card", headers=acct.headers, json={"payment_method": "tok_visa"})
        assert r.status_code == 400
    assert (await limited.post("/card", json={"payment_method": "pm_x"})).status_code == 401
    assert (await _attach(limited, stripe_admin, acct.headers, VISA)).status_code == 200


async def test_saving_a_card_does_not_switch_auto_recharge_on(
        client: httpx.AsyncClient, make_account: MakeAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct = await make_account(balance="0")
    r = await client.post("/card/setup", headers=acct.headers, json={})
    assert r.status_code == 200
    assert (await _attach(client, stripe_admin, acct.headers, VISA)).status_code == 200
    view = (await client.get("/billing-threshold", headers=acct.headers)).json()
    assert view["enabled"] is False and view["card_on_file"] is True
    from storage.billing import BillingRepository

    assert await BillingRepository(app.state.sn.db).recharge_armed(acct.uid) is False
    # Settings alone do not switch it on either; only an explicit enabled: true does.
    r = await client.post("/billing-threshold", headers=acct.headers, json={"threshold": 20, "recharge_below": 1})
    assert r.json()["enabled"] is False
    r = await client.post("/billing-threshold", headers=acct.headers, json={"enabled": True})
    assert r.json()["enabled"] is True and r.json()["threshold"] == 20.0
    assert await BillingRepository(app.state.sn.db).recharge_armed(acct.uid) is True
