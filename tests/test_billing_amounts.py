"""Auto-recharge amounts (whole cents, top-up bounds, floor below amount, cool-down) and credits
of what Stripe received rather than what was asked, and the webhook's adoption of a lost intent."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import MakeAccount
from tests.fixtures.stripe import THREE_D_SECURE, CardAccount, StripeAdmin, post_event
from tests.helpers import balanced, payments


async def _ledger_credit(app: Any, pi: str) -> Any:
    return await app.state.sn.db.fetchrow(
        "SELECT amount_micros, reason FROM ledger WHERE stripe_id = $1 AND kind IN ('topup', 'auto_recharge')", pi)


@pytest.mark.parametrize(("body", "error"), [
    ({"threshold": 10.009999}, "Invalid threshold: whole cents only"),
    ({"threshold": "10.001"}, "Invalid threshold: whole cents only"),
    ({"threshold": 10000}, "Invalid threshold: must be between 5 and 1000 dollars"),
    ({"threshold": 1}, "Invalid threshold: must be between 5 and 1000 dollars"),
    ({"threshold": 10, "recharge_below": 10}, "Invalid recharge_below: must be below the recharge amount"),
    ({"recharge_below": 60}, "Invalid recharge_below: must be below the recharge amount (threshold, 50.0"),
    ({"recharge_below": 5000}, "Invalid recharge_below: must be between 0 and 1000 dollars"),
])
async def test_recharge_settings_refused(client: httpx.AsyncClient, make_account: MakeAccount,
                                         body: dict[str, Any], error: str) -> None:
    acct = await make_account()
    r = await client.post("/billing-threshold", headers=acct.headers, json=body)
    assert r.status_code == 400 and r.json()["error"].startswith(error), r.text
    view = (await client.get("/billing-threshold", headers=acct.headers)).json()
    assert (view["threshold"], view["recharge_below"]) == (50.0, 0.01)


async def test_recharge_settings_accepted_at_the_bounds(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account()
    r = await client.post("/billing-threshold", headers=acct.headers,
                          json={"threshold": 1000, "recharge_below": 999.99})
    assert r.status_code == 200 and (r.json()["threshold"], r.json()["recharge_below"]) == (1000.0, 999.99)
    # Lowering the amount under the stored floor is refused too.
    r = await client.post("/billing-threshold", headers=acct.headers, json={"threshold": 5.01})
    assert r.status_code == 400 and "recharge_below" in r.json()["error"]
    r = await client.post("/billing-threshold", headers=acct.headers, json={"threshold": 5.01, "recharge_below": 5})
    assert r.status_code == 200 and r.json()["threshold"] == 5.01


async def test_a_stored_amount_out_of_bounds_is_charged_within_them(
        app: Any, card_account: CardAccount, stripe_admin: StripeAdmin) -> None:
    """Rows written before the bounds (or by hand) still never charge above topup_max nor a
    fraction of a cent, and the ledger credits what the card paid."""
    from billing.payments import recharge
    from storage.accounts import AccountRepository

    st = app.state.sn
    for stored, charged in ((10_000_000_000, 100_000), (1_009_999, 500), (7_009_999, 700)):
        acct = await card_account(balance="0", recharge={"enabled": True, "recharge_below": 1})
        await AccountRepository(st.db).set_recharge_amount(acct.uid, stored)
        out = await recharge(st.billing, acct.uid)
        assert out is not None and out.status == "succeeded"
        pi = await stripe_admin.intent(out.payment_intent or "")
        assert pi["amount"] == charged
        assert (await _ledger_credit(app, pi["id"]))["amount_micros"] == charged * 10_000
        assert await balanced(app, acct.uid) == charged * 10_000


async def test_no_second_recharge_within_the_cool_down(app: Any, card_account: CardAccount,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A floor above the amount (stored before it was refused) leaves the balance under it after
    a recharge; the cool-down keeps the next paid calls from charging the card again."""
    from billing.payments import recharge
    from storage.billing import BillingRepository

    st = app.state.sn
    acct = await card_account(balance="0")
    await BillingRepository(st.db).set_recharge(acct.uid, 10_000_000, 100_000_000, True, 10_000)
    first = await recharge(st.billing, acct.uid)
    assert first is not None and first.status == "succeeded"
    for _ in range(3):
        assert await recharge(st.billing, acct.uid) is None
    # A call the balance cannot pay still gets its recharge, cool-down or not.
    assert (await recharge(st.billing, acct.uid, need_micros=10_000_001)) is not None
    # Past the cool-down the floor applies again.
    monkeypatch.setattr(st.settings, "recharge_cooldown_seconds", 0.0)
    again = await recharge(st.billing, acct.uid)
    assert again is not None and again.status == "succeeded"
    assert [p["status"] for p in await payments(app, acct.uid)] == ["succeeded"] * 3
    assert await balanced(app, acct.uid) == 30_000_000


async def test_credit_is_what_stripe_received(client: httpx.AsyncClient, app: Any, card_account: CardAccount,
                                              stripe_admin: StripeAdmin, caplog: pytest.LogCaptureFixture) -> None:
    """Stripe reports less than asked: the ledger credits what it received, and says so."""
    from billing.reconcile import reconcile
    from tests.fakes.stripe_server import RECEIVED

    acct = await card_account(THREE_D_SECURE)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    pi, secret = r.json()["payment_intent"], r.json()["client_secret"]
    RECEIVED[pi] = 900
    await stripe_admin.authenticate(pi, secret)
    await reconcile(app.state.sn.billing, older_than_s=0)
    [p] = await payments(app, acct.uid)
    assert (p["status"], p["amount_micros"], p["received_micros"]) == ("succeeded", 10_000_000, 9_000_000)
    credit = await _ledger_credit(app, pi)
    assert credit["amount_micros"] == 9_000_000 and "received 9000000 of 10000000" in credit["reason"]
    assert await balanced(app, acct.uid) == 14_000_000
    assert any("Stripe received 9000000" in m for m in caplog.messages)


async def test_event_credits_the_amount_received(client: httpx.AsyncClient, app: Any, card_account: CardAccount,
                                                 stripe_admin: StripeAdmin) -> None:
    acct = await card_account(THREE_D_SECURE)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    pi = await stripe_admin.intent(r.json()["payment_intent"])
    out = await post_event(client, "payment_intent.succeeded", {**pi, "status": "succeeded", "amount_received": 700})
    assert out.json()["outcome"] == "credited"
    assert (await _ledger_credit(app, pi["id"]))["amount_micros"] == 7_000_000
    assert await balanced(app, acct.uid) == 12_000_000


async def _customer(db: Any, uid: str) -> str | None:
    from storage.billing import BillingRepository

    profile = await BillingRepository(db).profile(uid)
    assert profile is not None
    customer: str | None = profile["stripe_customer_id"]
    return customer


async def _lost_intent_row(app: Any, uid: str, amount_micros: int) -> Any:
    from storage.payments import PaymentRepository

    row = await PaymentRepository(app.state.sn.db).start_topup(uid, amount_micros, None, 0)
    assert row is not None
    return row


def _intent_event(row: Any, uid: str, customer: str | None, cents: int, **meta: str) -> dict[str, Any]:
    return {"id": f"pi_{uuid.uuid4().hex[:20]}", "object": "payment_intent", "amount": cents,
            "amount_received": cents, "currency": "usd", "customer": customer, "status": "succeeded",
            "metadata": {"syncnode_payment": str(row["id"]), "syncnode_uid": uid, **meta}}


async def test_succeeded_event_adopts_only_the_row_it_was_made_for(
        client: httpx.AsyncClient, app: Any, card_account: CardAccount) -> None:
    from storage.payments import PaymentRepository

    db = app.state.sn.db
    acct, other = await card_account(), await card_account()
    customer, other_customer = await _customer(db, acct.uid), await _customer(db, other.uid)
    row = await _lost_intent_row(app, acct.uid, 10_000_000)
    hostile = [
        _intent_event(row, other.uid, customer, 1000),  # someone else's uid
        _intent_event(row, acct.uid, other_customer, 1000),  # someone else's Customer
        _intent_event(row, acct.uid, None, 1000),  # no Customer
        _intent_event(row, acct.uid, customer, 100_000),  # not the amount of the row
        {**_intent_event(row, acct.uid, customer, 1000), "metadata": {"syncnode_payment": str(row["id"])}},
    ]
    for ev in hostile:
        assert (await post_event(client, "payment_intent.succeeded", ev)).json()["outcome"] == "ignored"
    fresh = await PaymentRepository(db).get(row["id"])
    assert fresh is not None and fresh["payment_intent"] is None and fresh["status"] == "pending"
    assert await balanced(app, acct.uid) == 5_000_000 and await balanced(app, other.uid) == 5_000_000
    # A failed row never takes an intent, even a matching one.
    failed = await _lost_intent_row(app, acct.uid, 10_000_000)
    await PaymentRepository(db).mark(failed["id"], "failed", "declined")
    ev = _intent_event(failed, acct.uid, customer, 1000)
    assert (await post_event(client, "payment_intent.succeeded", ev)).json()["outcome"] == "ignored"
    # The intent the row was made for is adopted and credited once.
    ev = _intent_event(row, acct.uid, customer, 1000)
    assert (await post_event(client, "payment_intent.succeeded", ev)).json()["outcome"] == "credited"
    assert (await post_event(client, "payment_intent.succeeded", ev)).json()["outcome"] == "already credited"
    adopted = await PaymentRepository(db).get(row["id"])
    assert adopted is not None and adopted["payment_intent"] == ev["id"]
    assert await balanced(app, acct.uid) == 15_000_000
