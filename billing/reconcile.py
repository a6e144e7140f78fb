"""Settle payments left open: the sweeper's pattern for money in.

A payment stays pending when its driver died (a crash between Stripe's answer and our credit)
or Stripe could not be reached; one waiting for 3-D Secure stays open until the cardholder
finishes. Every few seconds the billing pool pages through open payments older than
``reconcile_after_seconds`` whose lease has run out, asks Stripe where each one stands and
records it: a success is credited (once: the unique index), a PaymentIntent that was never
confirmed is canceled so that nothing can confirm it later, one that never got created fails,
and one whose cardholder has not authenticated within a day is canceled too.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import stripe

from billing.context import Billing
from billing.payments import after_settled, outcome_of, settle
from storage.payments import PaymentRepository

log = logging.getLogger("syncnode.billing")

_PAGE = 200
_INTERRUPTED = "The payment was interrupted before the card was charged"
# A payment still waiting for its cardholder after this long is canceled at Stripe and failed.
_ABANDONED = timedelta(days=1)
_BUDGET_S = 20.0


async def reconcile(b: Billing, older_than_s: float | None = None) -> dict[str, int]:
    counts = {"settled": 0, "skipped": 0}
    age = b.settings.reconcile_after_seconds if older_than_s is None else older_than_s
    after = None
    deadline = time.monotonic() + _BUDGET_S
    while time.monotonic() < deadline:
        rows = await PaymentRepository(b.db).open_older_than(age, _PAGE, after)
        for row in rows:
            done = await _one(b, row)
            counts["settled" if done else "skipped"] += 1
        if len(rows) < _PAGE:
            break
        after = (rows[-1]["created_at"], rows[-1]["id"])
    return counts


async def _one(b: Billing, row: asyncpg.Record) -> bool:
    repo = PaymentRepository(b.db)
    claimed = await repo.claim(row["id"], b.lease_seconds)
    if claimed is None:
        return False  # someone is driving it right now
    try:
        if claimed["payment_intent"] is None:
            # The request died before Stripe answered the create: nothing was confirmed.
            changed = await repo.mark(claimed["id"], "failed", _INTERRUPTED)
            await after_settled(b, outcome_of(claimed, status="failed"), changed)
            return True
        pi = await b.stripe.retrieve_intent(claimed["payment_intent"])
        stale = claimed["created_at"] < datetime.now(UTC) - _ABANDONED
        if pi.status == "requires_confirmation" or (pi.status == "requires_action" and stale):
            pi = await b.stripe.cancel_intent(pi.id)
        out = await settle(b, claimed, pi)
        if out.status != "pending":
            log.warning("reconciled payment %s (%s): %s", claimed["id"], pi.id, out.status)
        return out.status != "pending"
    except stripe.StripeError:
        log.warning("reconciling payment %s: Stripe failed; next round", claimed["id"], exc_info=True)
        await repo.release(claimed["id"])
        return False
