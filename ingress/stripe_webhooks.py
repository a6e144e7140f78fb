"""POST /webhooks/stripe: Stripe's events, verified with ``STRIPE_WEBHOOK_SECRET``.

A bad or stale signature (Stripe's 300 s tolerance) is 400 and changes nothing. A verified
event is acted on once (``billing/events.py``); a replay answers 200 and does nothing.
"""

from __future__ import annotations

import logging

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import Response

from billing.events import handle_event
from ingress.api_models import Received
from ingress.api_spec import api
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import BadRequest, PayloadTooLarge, Unavailable

log = logging.getLogger("syncnode.billing")

_MAX = 1 << 20


@api("Stripe events (Stripe-Signature, STRIPE_WEBHOOK_SECRET)", tags=("webhooks",), auth="signature",
     raw_body="application/json", ok={200: Received}, errors=(400, 413, 503),
     headers={"Stripe-Signature": "t=…,v1=…"}, required_headers=("Stripe-Signature",))
async def stripe_webhook(request: Request) -> Response:
    st = state(request)
    secret = st.settings.stripe_webhook_secret
    if secret is None:
        raise Unavailable("Stripe webhooks are not configured on this gateway (STRIPE_WEBHOOK_SECRET is unset)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX:
            raise PayloadTooLarge("Webhook body too large")
    try:
        stripe.Webhook.construct_event(body.decode("utf-8"), request.headers.get("stripe-signature"),
                                       secret.get_secret_value())
        event = orjson.loads(body)
    except (stripe.SignatureVerificationError, ValueError, UnicodeDecodeError):
        raise BadRequest("Invalid Stripe signature")
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise BadRequest("Invalid Stripe event")
    outcome = await handle_event(st.db, event)
    log.info("stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return JSON({"received": True, "outcome": outcome})
