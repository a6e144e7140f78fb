"""Stripe webhook events, acted on exactly once.

Each event is stored by its id first, in the same transaction as its effect: a replay finds
the id and does nothing, and an effect that fails rolls the id back so Stripe's retry runs it.
Money moves only through the same statements as the synchronous paths (one credit per
PaymentIntent id), plus the two debits only Stripe can cause: refunds and disputes.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from billing.client import from_cents
from storage.billing import BillingRepository
from storage.db import Conn
from storage.payments import PaymentRepository

log = logging.getLogger("syncnode.billing")


async def handle_event(db: asyncpg.Pool, event: dict[str, Any]) -> str:
    """Apply one verified event; returns what happened (for the log and the answer)."""
    async with db.acquire() as conn, conn.transaction():
        repo = PaymentRepository(conn)
        if not await repo.record_event(str(event["id"]), str(event["type"])):
            return "duplicate"
        obj = event.get("data", {}).get("object", {})
        handler = _HANDLERS.get(str(event["type"]))
        if handler is None:
            return "ignored"
        return await handler(conn, obj)


async def _succeeded(conn: Conn, pi: dict[str, Any]) -> str:
    repo = PaymentRepository(conn)
    row = await repo.by_intent(pi["id"])
    if row is None:
        # The create's answer was lost before its id was stored: the metadata names the row.
        ref = (pi.get("metadata") or {}).get("syncnode_payment")
        if not ref or not str(ref).isdigit():
            return "ignored"
        await repo.set_intent(int(ref), pi["id"], pi.get("client_secret"))
        row = await repo.by_intent(pi["id"])
        if row is None:
            return "ignored"
    credited, _ = await repo.credit(pi["id"])
    if credited and row["kind"] == "auto_recharge":
        await BillingRepository(conn).recharge_succeeded(row["uid"])
    return "credited" if credited else "already credited"


async def _payment_failed(conn: Conn, pi: dict[str, Any]) -> str:
    repo = PaymentRepository(conn)
    row = await repo.by_intent(pi["id"])
    # A payment being driven right now is recorded by its driver (it counts recharge failures).
    if row is None or row["status"] not in ("pending", "requires_action") or row["lease_until"] is not None:
        return "ignored"
    err = pi.get("last_payment_error") or {}
    await repo.mark(row["id"], "failed", f"Card declined: {err.get('message') or 'the payment failed'}")
    return "recorded"


async def _refunded(conn: Conn, charge: dict[str, Any]) -> str:
    repo = PaymentRepository(conn)
    uid = await repo.uid_for_intent_or_customer(_id(charge.get("payment_intent")), _id(charge.get("customer")))
    if uid is None or not await repo.lock_account(uid):
        return "ignored"
    # The event carries the cumulative amount refunded: debit what earlier events did not.
    owed = from_cents(int(charge.get("amount_refunded") or 0)) - await repo.refunded_micros(charge["id"])
    if owed <= 0:
        return "nothing to debit"
    await repo.debit(uid, "stripe_refund", charge["id"], owed, "card payment refunded")
    return "debited"


async def _dispute(conn: Conn, dispute: dict[str, Any]) -> str:
    repo = PaymentRepository(conn)
    uid = await repo.uid_for_intent_or_customer(_id(dispute.get("payment_intent")), None)
    if uid is None:
        return "ignored"
    done = await repo.debit(uid, "dispute", dispute["id"], from_cents(int(dispute.get("amount") or 0)),
                            f"card payment disputed ({dispute.get('reason') or 'no reason given'})")
    return "debited" if done else "already debited"


def _id(v: Any) -> str | None:
    """An expandable Stripe field: an id, or the object itself."""
    if isinstance(v, dict):
        return str(v.get("id")) if v.get("id") else None
    return str(v) if v else None


_HANDLERS = {
    "payment_intent.succeeded": _succeeded,
    "payment_intent.payment_failed": _payment_failed,
    "charge.refunded": _refunded,
    "charge.dispute.created": _dispute,
}
