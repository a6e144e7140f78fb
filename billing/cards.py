"""An account's Stripe Customer and its one saved card."""

from __future__ import annotations

from typing import Any

import stripe

from billing.client import translate
from billing.context import Billing
from jobs.errors import NotFound
from jobs.settings import to_micros
from storage.billing import BillingRepository


async def ensure_customer(b: Billing, uid: str) -> str:
    """The account's Stripe Customer, created on first use and its id stored."""
    repo = BillingRepository(b.db)
    profile = await repo.profile(uid)
    if profile is None:
        raise NotFound("Unknown account")
    if profile["stripe_customer_id"]:
        return str(profile["stripe_customer_id"])
    try:
        customer = await b.stripe.create_customer(uid, profile["email"])
    except stripe.StripeError as e:
        raise translate(e, "create the customer") from e
    return await repo.set_customer(uid, customer)


async def setup_intent(b: Billing, uid: str) -> dict[str, Any]:
    customer = await ensure_customer(b, uid)
    try:
        si = await b.stripe.setup_intent(customer)
    except stripe.StripeError as e:
        raise translate(e, "start saving a card") from e
    return {"client_secret": si.client_secret, "publishable_key": b.stripe.publishable_key,
            "setup_intent": si.id, "customer": customer}


def card_summary(card: dict[str, Any] | None) -> dict[str, Any] | None:
    if card is None:
        return None
    return {k: card[k] for k in ("brand", "last4", "exp_month", "exp_year")}


async def attach_card(b: Billing, uid: str, payment_method: str) -> dict[str, Any]:
    """Attach a PaymentMethod, make it the default, and remember it (replacing the old one)."""
    customer = await ensure_customer(b, uid)
    repo = BillingRepository(b.db)
    profile = await repo.profile(uid)
    old = profile["card"] if profile else None
    try:
        pm = await b.stripe.attach(payment_method, customer)
    except stripe.StripeError as e:
        raise translate(e, "save the card") from e
    c = pm.card
    card = {"payment_method": pm.id, "brand": c.brand, "last4": c.last4,
            "exp_month": c.exp_month, "exp_year": c.exp_year}
    await repo.set_card(uid, card, to_micros(b.settings.recharge_trigger))
    if old and old["payment_method"] != pm.id:
        await _detach_quietly(b, old["payment_method"])
    summary = card_summary(card)
    assert summary is not None
    return summary


async def get_card(b: Billing, uid: str) -> dict[str, Any]:
    profile = await BillingRepository(b.db).profile(uid)
    summary = card_summary(profile["card"] if profile else None)
    if summary is None:
        raise NotFound("No card on file")
    return summary


async def delete_card(b: Billing, uid: str) -> None:
    repo = BillingRepository(b.db)
    profile = await repo.profile(uid)
    if profile is None or profile["card"] is None:
        raise NotFound("No card on file")
    try:
        await b.stripe.detach(profile["card"]["payment_method"])
    except stripe.InvalidRequestError:
        pass  # already detached at Stripe (e.g. from its dashboard): forget it here too
    except stripe.StripeError as e:
        raise translate(e, "remove the card") from e
    await repo.set_card(uid, None, to_micros(b.settings.recharge_trigger))


async def _detach_quietly(b: Billing, payment_method: str) -> None:
    try:
        await b.stripe.detach(payment_method)
    except stripe.StripeError:
        pass  # the new card is saved; an old one left attached is harmless
