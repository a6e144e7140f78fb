"""The one Stripe client: the SDK's ``StripeClient`` on httpx, and what its errors mean to us.

The base address comes from ``STRIPE_BASE_URL`` (or ``SYNCNODE_STRIPE_BASE_URL``) so tests and
local development talk to localstripe. The SDK does not retry here: every call that moves
money is safe to repeat only through our own payment rows (``billing/payments.py``), not
through a retry the SDK would make on its own.
"""

from __future__ import annotations

from typing import Any

import stripe

from jobs.errors import BadRequest, PaymentRequired, SyncNodeError, UpstreamError
from jobs.settings import Settings

MICROS_PER_CENT = 10_000


def to_cents(micros: int) -> int:
    """Exact: an amount finer than a cent is refused, never rounded (the card would pay less
    than the ledger credits)."""
    cents, rest = divmod(micros, MICROS_PER_CENT)
    if rest:
        raise ValueError(f"{micros} micro-dollars is not a whole number of cents")
    return cents


def from_cents(cents: int) -> int:
    return cents * MICROS_PER_CENT


def received_micros(pi: Any) -> int:
    """What Stripe says a PaymentIntent (an SDK object or an event's dict) received.

    ``amount_received`` is always there on Stripe; a fake without it counts as the amount asked.
    """
    def field(name: str) -> Any:
        return pi.get(name) if isinstance(pi, dict) else getattr(pi, name, None)

    got = field("amount_received")
    return from_cents(int(field("amount") if got is None else got))


class StripeGateway:
    """The Stripe calls SyncNode makes, all async, each one request."""

    def __init__(self, settings: Settings) -> None:
        key = settings.stripe_secret_key
        assert key is not None, "STRIPE_SECRET_KEY is not set"
        self.publishable_key = settings.stripe_publishable_key
        self.http = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
        base = {"api": settings.stripe_base_url.rstrip("/")} if settings.stripe_base_url else None
        self.sdk = stripe.StripeClient(key.get_secret_value(), base_addresses=base,  # type: ignore[arg-type]
                                       http_client=self.http, max_network_retries=0)

    async def aclose(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]

    async def create_customer(self, uid: str, email: str | None) -> str:
        params: dict[str, Any] = {"metadata": {"uid": uid}}
        if email:
            params["email"] = email
        c = await self.sdk.v1.customers.create_async(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"syncnode-customer-{uid}"})
        return str(c.id)

    async def setup_intent(self, customer: str) -> Any:
        return await self.sdk.v1.setup_intents.create_async(
            params={"customer": customer, "usage": "off_session"})

    async def attach(self, payment_method: str, customer: str) -> Any:
        pm = await self.sdk.v1.payment_methods.attach_async(payment_method, params={"customer": customer})
        await self.sdk.v1.customers.update_async(
            customer, params={"invoice_settings": {"default_payment_method": payment_method}})
        return pm

    async def detach(self, payment_method: str) -> None:
        await self.sdk.v1.payment_methods.detach_async(payment_method)

    async def create_intent(self, *, amount_micros: int, customer: str, payment_method: str,
                            metadata: dict[str, str], idempotency_key: str) -> Any:
        """An unconfirmed PaymentIntent: its id is stored before any money moves (confirm)."""
        return await self.sdk.v1.payment_intents.create_async(
            params={"amount": to_cents(amount_micros), "currency": "usd", "customer": customer,
                    "payment_method": payment_method, "metadata": metadata},
            options={"idempotency_key": idempotency_key})

    async def confirm_off_session(self, payment_intent: str) -> Any:
        return await self.sdk.v1.payment_intents.confirm_async(
            payment_intent, params={"off_session": True})

    async def retrieve_intent(self, payment_intent: str) -> Any:
        return await self.sdk.v1.payment_intents.retrieve_async(payment_intent)

    async def cancel_intent(self, payment_intent: str) -> Any:
        return await self.sdk.v1.payment_intents.cancel_async(payment_intent)


def is_decline(e: stripe.StripeError) -> bool:
    """A refusal of the card itself (Stripe: CardError; localstripe: code card_declined)."""
    return isinstance(e, stripe.CardError) or getattr(e, "code", None) in ("card_declined", "expired_card",
                                                                          "incorrect_cvc", "processing_error")


def needs_authentication(e: stripe.StripeError) -> bool:
    return getattr(e, "code", None) == "authentication_required"


def message_of(e: stripe.StripeError) -> str:
    return str(e.user_message or getattr(e.error, "message", None) or "the card was declined")


def translate(e: stripe.StripeError, action: str) -> SyncNodeError:
    """Our error for a Stripe failure: the card's fault is 402, ours 400, Stripe's 502."""
    if is_decline(e):
        return PaymentRequired(f"Card declined: {message_of(e)}")
    if isinstance(e, stripe.InvalidRequestError) and (e.http_status or 500) < 500:
        return BadRequest(f"Stripe refused to {action}: {message_of(e)}")
    return UpstreamError(f"Stripe could not be reached to {action}; nothing was charged twice, "
                         "try again (with the same Idempotency-Key)")
