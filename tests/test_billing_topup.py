"""Cards and top-ups against localstripe: credited exactly once, whatever repeats or races."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import Account, MakeAccount
from tests.fixtures.stripe import (
    DECLINED_AT_ATTACH,
    DECLINED_AT_PAYMENT,
    PUBLISHABLE_KEY,
    THREE_D_SECURE,
    CardAccount,
    StripeAdmin,
    post_event,
)
from tests.helpers import balanced, payments


async def test_save_card_then_top_up_credits_once(client: httpx.AsyncClient, make_account: MakeAccount,
                                                  stripe_admin: StripeAdmin, app: Any) -> None:
    acct = await make_account()
    r = await client.post("/card/setup", headers=acct.headers, json={})
    assert r.status_code == 200, r.text
    setup = r.json()
    assert setup["client_secret"].startswith(setup["setup_intent"]) and setup["publishable_key"] == PUBLISHABLE_KEY
    # What Stripe.js does in the dashboard: confirm the SetupIntent with the card.
    pm = await stripe_admin.card()
    assert await stripe_admin.confirm_setup(setup["setup_intent"], pm) == "succeeded"
    r = await client.post("/card", headers=acct.headers, json={"payment_method": pm})
    assert r.status_code == 200, r.text
    card = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2031}
    assert r.json() == card
    assert (await client.get("/card", headers=acct.headers)).json() == card
    # The same customer is reused: a second setup (without a body) does not create another one.
    again = (await client.post("/card/setup", headers=acct.headers)).json()
    assert again["customer"] == setup["customer"]

    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["balance"] == 25.0 and body["amount"] == 20.0 and body["payment_intent"].startswith("pi_")
    assert (await stripe_admin.intent(body["payment_intent"]))["status"] == "succeeded"
    assert await balanced(app, acct.uid) == 25_000_000
    history = (await client.get("/billing-history", headers=acct.headers)).json()["history"]
    assert history[0]["kind"] == "topup" and history[0]["stripe_id"] == body["payment_intent"]
    assert history[0]["balance_after"] == 25.0 and history[1]["balance_after"] == 5.0

    r = await client.delete("/card", headers=acct.headers)
    assert r.status_code == 200
    assert (await client.get("/card", headers=acct.headers)).status_code == 404
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 20})
    assert r.status_code == 402 and "No card on file" in r.json()["error"]
    assert await balanced(app, acct.uid) == 25_000_000


async def test_same_idempotency_key_twice_and_concurrently_makes_one_payment_intent(
        client: httpx.AsyncClient, card_account: CardAccount, app: Any) -> None:
    acct = await card_account()
    headers = {**acct.headers, "Idempotency-Key": str(uuid.uuid4())}
    rs = await asyncio.gather(*(client.post("/topup_card", headers=headers, json={"amount": 10})
                                for _ in range(8)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert len({r.json()["payment_intent"] for r in rs}) == 1
    again = await client.post("/topup_card", headers=headers, json={"amount": 10})
    assert again.status_code == 200 and again.json()["payment_intent"] == rs[0].json()["payment_intent"]
    assert len(await payments(app, acct.uid)) == 1
    assert await balanced(app, acct.uid) == 15_000_000
    other = await client.post("/topup_card", headers=headers, json={"amount": 11})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]
    assert await balanced(app, acct.uid) == 15_000_000


async def test_webhook_and_synchronous_success_credit_once(client: httpx.AsyncClient, card_account: CardAccount,
                                                          stripe_admin: StripeAdmin, app: Any) -> None:
    acct = await card_account()
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 7.5})
    assert r.status_code == 200
    pi = await stripe_admin.intent(r.json()["payment_intent"])
    r = await post_event(client, "payment_intent.succeeded", pi)
    assert r.status_code == 200 and r.json()["outcome"] == "already credited"
    assert await balanced(app, acct.uid) == 12_500_000


async def test_decline_is_402_and_nothing_credited(client: httpx.AsyncClient, card_account: CardAccount,
                                                   make_account: MakeAccount, stripe_admin: StripeAdmin,
                                                   app: Any) -> None:
    acct = await card_account(DECLINED_AT_PAYMENT)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    assert r.json()["error"] == "Card declined: Your card was declined."
    assert [p["status"] for p in await payments(app, acct.uid)] == ["failed"]
    assert await balanced(app, acct.uid) == 5_000_000
    # A card refused when it is saved (how localstripe declines this one) is a 402 too.
    other = await make_account()
    pm = await stripe_admin.card(DECLINED_AT_ATTACH)
    r = await client.post("/card", headers=other.headers, json={"payment_method": pm})
    assert r.status_code == 402 and "declined" in r.json()["error"]
    assert (await client.get("/card", headers=other.headers)).status_code == 404


async def test_3d_secure_is_402_with_client_secret_then_credited_when_it_succeeds(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct = await card_account(THREE_D_SECURE)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    body = r.json()
    assert "3-D Secure" in body["error"] and body["client_secret"].startswith(body["payment_intent"])
    assert await balanced(app, acct.uid) == 5_000_000
    # The cardholder authenticates in the dashboard; Stripe then reports the success.
    await stripe_admin.authenticate(body["payment_intent"], body["client_secret"])
    pi = await stripe_admin.intent(body["payment_intent"])
    assert pi["status"] == "succeeded"
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    r = await post_event(client, "payment_intent.succeeded", pi, event_id=event_id)
    assert r.status_code == 200 and r.json()["outcome"] == "credited"
    assert await balanced(app, acct.uid) == 15_000_000
    replay = await post_event(client, "payment_intent.succeeded", pi, event_id=event_id)
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert await balanced(app, acct.uid) == 15_000_000


async def test_top_up_bounds_and_bad_input(client: httpx.AsyncClient, card_account: CardAccount,
                                           make_account: MakeAccount, app: Any) -> None:
    acct = await card_account()
    for amount, word in ((4.99, "between 5 and 1000"), (1000.01, "between 5 and 1000"), ("x", "number"),
                         (True, "number"), (10.001, "whole cents"), (None, "Missing amount")):
        r = await client.post("/topup_card", headers=acct.headers, json={"amount": amount})
        assert r.status_code == 400 and word in r.json()["error"], (amount, r.text)
    r = await client.post("/card", headers=acct.headers, json={"payment_method": "not-a-pm"})
    assert r.status_code == 400 and "payment_method" in r.json()["error"]
    r = await client.post("/card", headers=acct.headers, json={"payment_method": "pm_doesnotexist"})
    assert r.status_code == 400
    assert (await client.post("/topup_card", json={"amount": 10})).status_code == 401
    stranger = await make_account()
    r = await client.post("/topup_card", headers=stranger.headers, json={"uid": acct.uid, "amount": 10})
    assert r.status_code == 403
    assert await balanced(app, acct.uid) == 5_000_000
    assert await payments(app, acct.uid) == []


@pytest.fixture
async def no_stripe_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    from ingress.app import create_app
    from jobs.settings import Settings

    other = create_app(Settings(STRIPE_SECRET_KEY=None))
    async with other.router.lifespan_context(other), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other), base_url="http://gateway.test") as c:
        yield c


async def test_without_stripe_card_features_say_so(no_stripe_client: httpx.AsyncClient, funded: Account) -> None:
    for method, path in (("GET", "/card"), ("POST", "/card/setup"), ("POST", "/topup_card")):
        r = await no_stripe_client.request(method, path, headers=funded.headers, json={"amount": 10})
        assert r.status_code == 402 and "STRIPE_SECRET_KEY" in r.json()["error"], (path, r.text)


async def test_billing_history_pages_by_id_with_the_balance_after_each_row(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account()
    admin = {"Authorization": "Bearer test-admin-token"}
    for amount in (1, -2, 3, 4, -5):
        r = await client.post("/admin/credit", headers=admin, json={"uid": acct.uid, "amount": amount, "reason": "t"})
        assert r.status_code == 200
    seen: list[dict[str, Any]] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
        page = (await client.get("/billing-history", headers=acct.headers, params=params)).json()
        seen += page["history"]
        before = page["next_before"]
        if before is None:
            break
    assert [h["amount"] for h in seen] == [-5.0, 4.0, 3.0, -2.0, 1.0, 5.0]
    assert [h["balance_after"] for h in seen] == [6.0, 11.0, 7.0, 4.0, 6.0, 5.0]
    assert [h["kind"] for h in seen] == ["credit"] * 5 + ["grant"]
    assert len({h["id"] for h in seen}) == 6
    for bad in ({"before": "x"}, {"before": 0}, {"limit": 0}, {"limit": 101}):
        r = await client.get("/billing-history", headers=acct.headers, params=bad)
        assert r.status_code == 400 and next(iter(bad)) in r.json()["error"]
    assert await balanced(app, acct.uid) == 6_000_000
