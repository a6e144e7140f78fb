"""Auto-recharge threshold, saved card and card top-ups (the reference's Billing section).

The threshold is stored now; charging a card needs Stripe, which this gateway does not drive
yet, so /card and /topup_card say so with 501 (or 402 when no Stripe key is configured at all,
per the CONTRACT) instead of pretending.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import Response

from ingress.body import read_json
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import BadRequest, NotImplementedYet, PaymentRequired
from jobs.settings import to_dollars, to_micros
from storage.accounts import AccountRepository

_MAX_THRESHOLD = Decimal("10000")


async def get_threshold(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    micros = await AccountRepository(st.db).recharge_amount(who.uid)
    amount = micros if micros is not None else to_micros(st.settings.recharge_amount)
    return JSON({"threshold": to_dollars(amount), "recharge_below": float(st.settings.recharge_trigger)})


async def post_threshold(request: Request) -> Response:
    st = state(request)
    body = await read_json(request, 64 << 10)
    uid = body.get("uid")
    who = await st.auth.principal(request, uid if isinstance(uid, str) else None, public=False)
    raw = body.get("threshold")
    if raw is None:
        raise BadRequest("Missing threshold parameter")
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise BadRequest("Invalid threshold: must be a number of dollars")
    if isinstance(raw, bool) or not Decimal("1") <= amount <= _MAX_THRESHOLD:
        raise BadRequest(f"Invalid threshold: must be between 1 and {_MAX_THRESHOLD} dollars")
    await AccountRepository(st.db).set_recharge_amount(who.uid, to_micros(amount))
    return JSON({"threshold": to_dollars(to_micros(amount)), "recharge_below": float(st.settings.recharge_trigger)})


def _no_cards(has_stripe: bool) -> Exception:
    if not has_stripe:
        return PaymentRequired("No card on file: card payments are not configured on this gateway "
                               "(STRIPE_SECRET_KEY is unset); ask the operator for credit")
    return NotImplementedYet("Card payments are not available on this gateway yet")


async def get_card(request: Request) -> Response:
    st = state(request)
    await st.auth.principal(request, request.query_params.get("uid"), public=False)
    raise _no_cards(st.settings.stripe_secret_key is not None)


async def topup_card(request: Request) -> Response:
    st = state(request)
    body = await read_json(request, 64 << 10)
    uid = body.get("uid")
    await st.auth.principal(request, uid if isinstance(uid, str) else None, public=False)
    raise _no_cards(st.settings.stripe_secret_key is not None)
