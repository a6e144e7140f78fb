"""Disputes move money when Stripe does: withdrawn funds debit, reinstated funds credit back, an
inquiry does nothing; refunds and disputes of one payment together never take back more than it
credited; every replay is a no-op; balance = Σ ledger throughout."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.stripe import CardAccount, StripeAdmin, post_event
from tests.helpers import balanced


async def _paid(client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin,
                dollars: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    acct = await card_account(balance="0")
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": dollars})
    assert r.status_code == 200, r.text
    pi = await stripe_admin.intent(r.json()["payment_intent"])
    return acct, pi, dict(pi["latest_charge"])


def _dispute(pi: dict[str, Any], cents: int, status: str = "needs_response") -> dict[str, Any]:
    return {"id": f"dp_{uuid.uuid4().hex[:20]}", "object": "dispute", "amount": cents, "currency": "usd",
            "charge": pi["latest_charge"]["id"], "payment_intent": pi["id"], "reason": "general", "status": status}


async def _outcome(client: httpx.AsyncClient, event_type: str, obj: dict[str, Any], **kw: Any) -> str:
    r = await post_event(client, event_type, obj, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["outcome"])


async def test_inquiry_then_refund_debits_once(client: httpx.AsyncClient, card_account: CardAccount,
                                               stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi, charge = await _paid(client, card_account, stripe_admin, 20)
    inquiry = _dispute(pi, 2000, "warning_needs_response")
    assert await _outcome(client, "charge.dispute.created", inquiry) == "recorded"
    assert await balanced(app, acct.uid) == 20_000_000
    assert await _outcome(client, "charge.refunded", {**charge, "amount_refunded": 2000}) == "debited"
    assert await balanced(app, acct.uid) == 0
    # The inquiry closing (lost or won) moves nothing: no funds were ever withdrawn for it.
    assert await _outcome(client, "charge.dispute.closed", {**inquiry, "status": "warning_closed"}) == "recorded"
    assert await _outcome(client, "charge.dispute.closed", {**inquiry, "status": "won"}) == "nothing to reinstate"
    assert await balanced(app, acct.uid) == 0


async def test_refund_then_dispute_is_capped_at_the_payment(client: httpx.AsyncClient, card_account: CardAccount,
                                                            stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi, charge = await _paid(client, card_account, stripe_admin, 20)
    assert await _outcome(client, "charge.refunded", {**charge, "amount_refunded": 500}) == "debited"
    dispute = _dispute(pi, 2000)
    assert await _outcome(client, "charge.dispute.funds_withdrawn", dispute) == "debited"
    assert await balanced(app, acct.uid) == 0  # $5 refunded + $15 of the $20 disputed: the $20 paid
    assert await _outcome(client, "charge.refunded", {**charge, "amount_refunded": 2000}) == "nothing to debit"
    assert await _outcome(client, "charge.dispute.funds_withdrawn", _dispute(pi, 2000)) == "nothing to debit"
    assert await balanced(app, acct.uid) == 0
    # Won: exactly what the dispute took ($15) comes back, once, however it is reported.
    assert await _outcome(client, "charge.dispute.funds_reinstated", dispute) == "credited"
    assert await _outcome(client, "charge.dispute.funds_reinstated", dispute) == "already credited"
    assert await _outcome(client, "charge.dispute.closed", {**dispute, "status": "won"}) == "already credited"
    assert await balanced(app, acct.uid) == 15_000_000
    kinds = [(h["kind"], h["amount"]) for h in
             (await client.get("/billing-history", headers=acct.headers)).json()["history"]]
    assert kinds[:3] == [("dispute_reversal", 15.0), ("dispute", -15.0), ("stripe_refund", -5.0)]


async def test_dispute_won_credits_back_and_leaves_room_for_a_later_refund(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi, charge = await _paid(client, card_account, stripe_admin, 20)
    dispute = _dispute(pi, 2000)
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    assert await _outcome(client, "charge.dispute.created", dispute) == "recorded"
    assert await _outcome(client, "charge.dispute.funds_withdrawn", dispute, event_id=event_id) == "debited"
    assert await _outcome(client, "charge.dispute.funds_withdrawn", dispute, event_id=event_id) == "duplicate"
    assert await _outcome(client, "charge.dispute.funds_withdrawn", dispute) == "already debited"
    assert await balanced(app, acct.uid) == 0
    assert await _outcome(client, "charge.refunded", {**charge, "amount_refunded": 2000}) == "nothing to debit"
    assert await _outcome(client, "charge.dispute.closed", {**dispute, "status": "won"}) == "credited"
    assert await _outcome(client, "charge.dispute.funds_reinstated", dispute) == "already credited"
    assert await balanced(app, acct.uid) == 20_000_000
    # The charge is whole again: a refund of it may now take its $20 back, and no more.
    assert await _outcome(client, "charge.refunded", {**charge, "amount_refunded": 2000}) == "debited"
    assert await balanced(app, acct.uid) == 0


async def test_dispute_taking_the_balance_negative_is_lifted_by_the_win(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi, _ = await _paid(client, card_account, stripe_admin, 10)
    await app.state.sn.db.execute(  # spent $9 of it (charges are ledger rows like any other)
        "WITH l AS (INSERT INTO ledger (uid, amount_micros, kind, reason) VALUES ($1, -9000000, 'credit', 'spent') "
        "RETURNING amount_micros) UPDATE accounts SET balance_micros = balance_micros + (SELECT amount_micros FROM l) "
        "WHERE uid = $1", acct.uid)
    dispute = _dispute(pi, 1000)
    assert await _outcome(client, "charge.dispute.funds_withdrawn", dispute) == "debited"
    assert await balanced(app, acct.uid) == -9_000_000
    assert await _outcome(client, "charge.dispute.funds_reinstated", dispute) == "credited"
    assert await balanced(app, acct.uid) == 1_000_000
    clawback = await app.state.sn.db.fetchval("SELECT clawback_micros FROM accounts WHERE uid = $1", acct.uid)
    assert clawback == 0


async def test_disputes_and_refunds_of_payments_not_ours_are_ignored(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi, charge = await _paid(client, card_account, stripe_admin, 10)
    foreign = {**pi, "id": f"pi_{uuid.uuid4().hex[:20]}"}
    assert await _outcome(client, "charge.dispute.funds_withdrawn", _dispute(foreign, 1000)) == "ignored"
    assert await _outcome(client, "charge.refunded", {**charge, "payment_intent": foreign["id"],
                                                      "amount_refunded": 1000}) == "ignored"
    assert await _outcome(client, "charge.refunded", {**charge, "payment_intent": None,
                                                      "amount_refunded": 1000}) == "ignored"
    assert await _outcome(client, "charge.dispute.funds_reinstated", _dispute(pi, 1000)) == "nothing to reinstate"
    assert await balanced(app, acct.uid) == 10_000_000
