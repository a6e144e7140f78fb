"""POST /webhooks/stripe: signatures, replays, refunds and disputes (the only way below zero)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from tests.fixtures.stripe import CardAccount, StripeAdmin, post_event, signed
from tests.helpers import CHAT, balanced, payments

KEYS = {"openrouter_key": "sk-or-v1-billing"}


async def _topped_up(client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin,
                     amount: float, **kw: Any) -> tuple[Any, dict[str, Any]]:
    acct = await card_account(**kw)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": amount})
    assert r.status_code == 200, r.text
    pi = await stripe_admin.intent(r.json()["payment_intent"])
    return acct, pi


def _dispute(pi: dict[str, Any], amount_cents: int) -> dict[str, Any]:
    return {"id": f"dp_{uuid.uuid4().hex[:20]}", "object": "dispute", "amount": amount_cents, "currency": "usd",
            "charge": pi["latest_charge"]["id"], "payment_intent": pi["id"], "reason": "fraudulent",
            "status": "needs_response"}


async def test_forged_or_stale_signature_is_400_and_changes_nothing(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi = await _topped_up(client, card_account, stripe_admin, 10)
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    dispute = _dispute(pi, 1000)
    forged = [
        signed("charge.dispute.funds_withdrawn", dispute, event_id=event_id, secret="whsec_attacker"),
        signed("charge.dispute.funds_withdrawn", dispute, event_id=event_id, timestamp=int(time.time()) - 400),
    ]
    body, headers = signed("charge.dispute.funds_withdrawn", dispute, event_id=event_id)
    forged.append((body.replace(b'"amount":1000', b'"amount":9000'), headers))  # tampered after signing
    forged.append((body, {"Content-Type": "application/json"}))  # no signature at all
    for payload, hdrs in forged:
        r = await client.post("/webhooks/stripe", content=payload, headers=hdrs)
        assert r.status_code == 400 and r.json() == {"error": "Invalid Stripe signature"}
    assert await balanced(app, acct.uid) == 15_000_000
    # Nothing was stored either: the genuine event with that id still acts.
    r = await post_event(client, "charge.dispute.funds_withdrawn", dispute, event_id=event_id)
    assert r.status_code == 200 and r.json()["outcome"] == "debited"
    assert await balanced(app, acct.uid) == 5_000_000


async def test_dispute_takes_the_balance_negative_paid_calls_402_until_a_top_up(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, chat_worker: Any,
        app: Any) -> None:
    acct, pi = await _topped_up(client, card_account, stripe_admin, 10, balance="0", keys=KEYS)
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"paid {uuid.uuid4()}"})
    assert r.status_code == 200
    dispute = _dispute(pi, 1000)
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    r = await post_event(client, "charge.dispute.funds_withdrawn", dispute, event_id=event_id)
    assert r.json()["outcome"] == "debited"
    assert await balanced(app, acct.uid) == -20_000
    assert (await client.get("/balance", headers=acct.headers)).json() == {"balance": -0.02}
    # Replays (same event, or a new event for the same dispute) debit nothing more.
    again = await post_event(client, "charge.dispute.funds_withdrawn", dispute, event_id=event_id)
    assert again.json()["outcome"] == "duplicate"
    assert (await post_event(client, "charge.dispute.funds_withdrawn", dispute)).json()["outcome"] == "already debited"
    assert await balanced(app, acct.uid) == -20_000
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "while negative"})
    assert r.status_code == 402
    # An admin cannot push it further down either.
    r = await client.post("/admin/credit", headers={"Authorization": "Bearer test-admin-token"},
                          json={"uid": acct.uid, "amount": -1, "reason": "x"})
    assert r.status_code == 400
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 5})
    assert r.status_code == 200 and r.json()["balance"] == 4.98
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"paid again {uuid.uuid4()}"})
    assert r.status_code == 200
    assert await balanced(app, acct.uid) == 4_960_000
    kinds = [h["kind"] for h in (await client.get("/billing-history", headers=acct.headers)).json()["history"]]
    assert kinds[:4] == ["charge", "topup", "dispute", "charge"]


async def test_partial_refunds_add_up_and_replays_do_nothing(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct, pi = await _topped_up(client, card_account, stripe_admin, 20)
    charge = dict(pi["latest_charge"])
    first = f"evt_{uuid.uuid4().hex[:24]}"
    assert (await post_event(client, "charge.refunded", {**charge, "amount_refunded": 500},
                             event_id=first)).json()["outcome"] == "debited"
    assert (await post_event(client, "charge.refunded", {**charge, "amount_refunded": 500},
                             event_id=first)).json()["outcome"] == "duplicate"
    assert await balanced(app, acct.uid) == 20_000_000
    # Stripe's events carry the cumulative amount: the second refund debits only its own part.
    assert (await post_event(client, "charge.refunded", {**charge, "amount_refunded": 1200})).json()["outcome"] == \
        "debited"
    assert (await post_event(client, "charge.refunded", {**charge, "amount_refunded": 1200})).json()["outcome"] == \
        "nothing to debit"
    assert await balanced(app, acct.uid) == 13_000_000
    history = (await client.get("/billing-history", headers=acct.headers, params={"limit": 2})).json()
    assert [(h["kind"], h["amount"], h["stripe_id"]) for h in history["history"]] == [
        ("stripe_refund", -7.0, charge["id"]), ("stripe_refund", -5.0, charge["id"])]
    older = (await client.get("/billing-history", headers=acct.headers,
                              params={"before": history["next_before"], "limit": 2})).json()["history"]
    assert [h["kind"] for h in older] == ["topup", "grant"] and older[0]["balance_after"] == 25.0


async def test_payment_failed_event_is_recorded(client: httpx.AsyncClient, card_account: CardAccount,
                                                stripe_admin: StripeAdmin, app: Any) -> None:
    from tests.fixtures.stripe import THREE_D_SECURE

    acct = await card_account(THREE_D_SECURE)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    pi = await stripe_admin.intent(r.json()["payment_intent"])
    failed = {**pi, "status": "requires_payment_method",
              "last_payment_error": {"code": "payment_intent_authentication_failure",
                                     "message": "The provided PaymentMethod has failed authentication."}}
    r = await post_event(client, "payment_intent.payment_failed", failed)
    assert r.json()["outcome"] == "recorded"
    [p] = await payments(app, acct.uid)
    assert p["status"] == "failed" and "failed authentication" in p["error"]
    assert await balanced(app, acct.uid) == 5_000_000
    r = await client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    assert r.status_code == 400


async def test_localstripe_signed_event_credits_a_3d_secure_top_up(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    """The event localstripe itself signs and sends (not one we built) is accepted and credits."""
    from localstripe import webhooks
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tests.fixtures.servers import ServerThread
    from tests.fixtures.stripe import THREE_D_SECURE, WEBHOOK_SECRET

    got: list[tuple[bytes, str]] = []

    async def capture(request: Request) -> Response:
        got.append((await request.body(), request.headers["stripe-signature"]))
        return Response()

    acct = await card_account(THREE_D_SECURE)
    r = await client.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    pi, secret = r.json()["payment_intent"], r.json()["client_secret"]
    hook = f"capture-{uuid.uuid4().hex[:8]}"
    with ServerThread(Starlette(routes=[Route("/hook", capture, methods=["POST"])])) as receiver:
        webhooks.register_webhook(hook, receiver.url + "/hook", WEBHOOK_SECRET, ["payment_intent.succeeded"])
        try:
            await stripe_admin.authenticate(pi, secret)
            for _ in range(100):
                if any(pi.encode() in body for body, _ in got):
                    break
                await asyncio.sleep(0.05)
        finally:
            del webhooks._webhooks[hook]
    body, signature = next((b, s) for b, s in got if pi.encode() in b)
    r = await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": signature})
    assert r.status_code == 200 and r.json()["outcome"] == "credited"
    assert await balanced(app, acct.uid) == 15_000_000
