"""Auto-recharge settings, the saved card and card top-ups (the reference's Billing section).

Thin: the work is in ``billing/``. Without ``STRIPE_SECRET_KEY`` the card routes answer 402
saying card payments are not configured (CONTRACT §2).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from billing import cards, payments
from billing.context import Billing
from ingress.api_models import Card, CardDeleted, CardSetup, Threshold, TopUp, TopUpProcessing
from ingress.api_requests import PAYMENT_METHOD, CardAttach, ThresholdUpdate, TopUpRequest, UidBody, UidQuery
from ingress.api_spec import IDEMPOTENCY, READ, api
from ingress.body import read_json
from ingress.card_limits import count_card_attempt
from ingress.responses import JSON
from ingress.state import AppState, state
from jobs.errors import BadRequest, PaymentRequired
from jobs.settings import to_dollars, to_micros
from storage.billing import BillingRepository

_CENT = Decimal("0.01")


def _billing(st: AppState) -> Billing:
    if st.billing is None:
        raise PaymentRequired("No card on file: card payments are not configured on this gateway "
                              "(STRIPE_SECRET_KEY is unset); ask the operator for credit")
    return st.billing


async def _body_principal(request: Request) -> tuple[AppState, str, dict[str, Any]]:
    st = state(request)
    body = await read_json(request, 64 << 10)
    uid = body.get("uid")
    if uid is not None and not isinstance(uid, str):
        raise BadRequest("Invalid uid: must be a string")
    who = await st.auth.principal(request, uid, public=False)
    return st, who.uid, body


async def _query_principal(request: Request) -> tuple[AppState, str]:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    return st, who.uid


def _dollars(body: dict[str, Any], name: str, lo: Decimal, hi: Decimal, cents: bool = False) -> int | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise BadRequest(f"Invalid {name}: must be a number of dollars")
    if isinstance(raw, bool) or not amount.is_finite() or not lo <= amount <= hi:
        raise BadRequest(f"Invalid {name}: must be between {lo} and {hi} dollars")
    # Checked on the decimal as sent: a card is charged in cents, so an amount finer than a
    # cent would be charged one thing and credited another.
    if cents and amount != amount.quantize(_CENT):
        raise BadRequest(f"Invalid {name}: whole cents only")
    return to_micros(amount)


async def _threshold_view(st: AppState, uid: str) -> dict[str, Any]:
    p = await BillingRepository(st.db).profile(uid)
    assert p is not None
    amount = p["recharge_amount_micros"] or to_micros(st.settings.recharge_amount)
    below = p["recharge_below_micros"]
    return {
        "threshold": to_dollars(amount),
        "recharge_below": to_dollars(below) if below is not None else float(st.settings.recharge_trigger),
        "enabled": p["recharge_enabled"],
        "card_on_file": p["card"] is not None,
        "failures": p["recharge_failures"],
        "disabled_reason": p["recharge_off_reason"],
    }


@api("Auto-recharge settings and state", tags=("billing",), auth="bearer", query=UidQuery, ok={200: Threshold},
     errors=READ)
async def get_threshold(request: Request) -> Response:
    st, uid = await _query_principal(request)
    return JSON(await _threshold_view(st, uid))


@api("Set auto-recharge", tags=("billing",), auth="bearer", body=ThresholdUpdate, ok={200: Threshold},
     errors=(*READ, 413))
async def post_threshold(request: Request) -> Response:
    st, uid, body = await _body_principal(request)
    lo, hi = st.settings.topup_min, st.settings.topup_max
    # The recharge amount is a card payment like a top-up: the same bounds, whole cents.
    amount = _dollars(body, "threshold", lo, hi, cents=True)
    below = _dollars(body, "recharge_below", Decimal("0"), hi)
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise BadRequest("Invalid enabled: must be true or false")
    if amount is None and below is None and enabled is None:
        raise BadRequest("Missing threshold parameter (or recharge_below, enabled)")
    await _check_below_amount(st, uid, amount, below)
    await BillingRepository(st.db).set_recharge(uid, amount, below, enabled, to_micros(st.settings.recharge_trigger))
    return JSON(await _threshold_view(st, uid))


async def _check_below_amount(st: AppState, uid: str, amount: int | None, below: int | None) -> None:
    """A floor at or above the amount would leave the balance under it after every recharge,
    so each paid call would charge the card again."""
    if amount is None and below is None:
        return
    p = await BillingRepository(st.db).profile(uid)
    assert p is not None
    amount = amount or p["recharge_amount_micros"] or to_micros(st.settings.recharge_amount)
    below = below if below is not None else p["recharge_below_micros"]
    if below is not None and below >= amount:
        raise BadRequest(f"Invalid recharge_below: must be below the recharge amount (threshold, "
                         f"{to_dollars(amount)} dollars)")


@api("Start saving a card: a SetupIntent's client_secret for Stripe.js", tags=("billing",), auth="bearer",
     body=UidBody, body_required=False, query=UidQuery, ok={200: CardSetup}, errors=(*READ, 402, 413, 502, 503))
async def card_setup(request: Request) -> Response:
    # The body is optional here: a dashboard's button posts nothing.
    if request.headers.get("content-length") in (None, "0"):
        st, uid = await _query_principal(request)
    else:
        st, uid, _ = await _body_principal(request)
    b = _billing(st)
    await count_card_attempt(st, request, uid, "setup")
    return JSON(await cards.setup_intent(b, uid))


@api("The saved payment card", tags=("billing",), auth="bearer", query=UidQuery, ok={200: Card},
     errors=(*READ, 402))
async def get_card(request: Request) -> Response:
    st, uid = await _query_principal(request)
    return JSON(await cards.get_card(_billing(st), uid))


@api("Save a confirmed card as the default", tags=("billing",), auth="bearer", body=CardAttach, ok={200: Card},
     errors=(*READ, 402, 413, 502, 503))
async def post_card(request: Request) -> Response:
    st, uid, body = await _body_principal(request)
    pm = body.get("payment_method")
    # Stripe's id alphabet only: the id goes into Stripe's URL path (a "{" there was a 502).
    if not isinstance(pm, str) or not re.fullmatch(PAYMENT_METHOD, pm):
        raise BadRequest("Invalid payment_method: must be a Stripe PaymentMethod id (pm_…)")
    b = _billing(st)
    await count_card_attempt(st, request, uid, "attach")
    return JSON(await cards.attach_card(b, uid, pm))


@api("Remove the saved card", tags=("billing",), auth="bearer", query=UidQuery, ok={200: CardDeleted},
     errors=(*READ, 402, 502, 503))
async def delete_card(request: Request) -> Response:
    st, uid = await _query_principal(request)
    await cards.delete_card(_billing(st), uid)
    return JSON({"deleted": True})


@api("Top up from the saved card", tags=("billing",), auth="bearer", body=TopUpRequest, headers=IDEMPOTENCY,
     ok={200: TopUp, 202: TopUpProcessing}, errors=(*READ, 402, 409, 413, 502, 503))
async def topup_card(request: Request) -> Response:
    st, uid, body = await _body_principal(request)
    b = _billing(st)
    lo, hi = st.settings.topup_min, st.settings.topup_max
    if body.get("amount") is None:
        raise BadRequest("Missing amount parameter (dollars)")
    amount = _dollars(body, "amount", lo, hi)
    assert amount is not None
    if amount % 10_000:
        raise BadRequest("Invalid amount: whole cents only")
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise BadRequest("Invalid Idempotency-Key: 1 to 255 characters")
    profile = await BillingRepository(st.db).profile(uid)
    if profile is None or profile["card"] is None:
        raise PaymentRequired(payments.NO_CARD)
    out = await payments.topup(b, uid, amount, key)
    return _answer(out)


def _answer(out: payments.Outcome) -> Response:
    if out.status == "succeeded":
        return JSON({"balance": to_dollars(out.balance_micros or 0), "amount": to_dollars(out.amount_micros),
                     "payment_intent": out.payment_intent})
    if out.status == "requires_action":
        raise PaymentRequired(out.error or payments.NEEDS_AUTH,
                              extra={"client_secret": out.client_secret, "payment_intent": out.payment_intent})
    if out.status == "failed":
        raise PaymentRequired(out.error or "The payment failed", extra={"payment_intent": out.payment_intent})
    # Stripe has not decided yet (processing): the credit arrives by webhook or reconciliation.
    return JSON({"status": "processing", "amount": to_dollars(out.amount_micros),
                 "payment_intent": out.payment_intent}, status_code=202)
