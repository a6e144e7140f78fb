"""Stripe webhook events, acted on exactly once.

Each event is stored by its id first, in the same transaction as its effect: a replay finds
the id and does nothing, and an effect that fails rolls the id back so Stripe's retry runs it.
Money moves only through the same statements as the synchronous paths (one credit per
PaymentIntent id, of what Stripe received), plus what only Stripe can cause: refunds and
disputes' withdrawn funds (together never more than the payment credited) and the reversal of
a won dispute's debit.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from billing.client import from_cents
from billing.payments import credit
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
    row = await repo.by_intent(pi["id"]) or await _adopt(repo, pi)
    if row is None:
        return "ignored"
    credited, _ = await credit(repo, row, pi)
    if credited and row["kind"] == "auto_recharge":
        await BillingRepository(conn).recharge_succeeded(row["uid"])
    return "credited" if credited else "already credited"


async def _adopt(repo: PaymentRepository, pi: dict[str, Any]) -> asyncpg.Record | None:
    """The create's answer was lost before its id was stored: the metadata names the row. Only
    an open row without an intent, of the account and Customer the intent names, for the same
    amount, takes it: anything else is an intent we did not make for that row."""
    meta = pi.get("metadata") or {}
    ref, uid = meta.get("syncnode_payment"), meta.get("syncnode_uid")
    amount = pi.get("amount")
    if not (isinstance(ref, str) and ref.isdigit() and len(ref) < 19 and isinstance(uid, str)
            and isinstance(amount, int) and not isinstance(amount, bool)):
        return None
    row = await repo.adopt_intent(int(ref), pi["id"], pi.get("client_secret"), uid=uid,
                                  customer=_id(pi.get("customer")), amount_micros=from_cents(amount))
    if row is None:
        log.warning("payment_intent.succeeded %s names payment %s, which it does not match: not credited",
                    pi["id"], ref)
    return row


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
    intent = _id(charge.get("payment_intent"))
    uid = await _locked_owner(repo, intent)
    if uid is None or intent is None:
        return "ignored"
    # The event carries the cumulative amount refunded: debit what earlier events did not, and
    # never more than the payment credited less what was already taken back (disputes too).
    owed = from_cents(int(charge.get("amount_refunded") or 0)) - await repo.refunded_micros(charge["id"])
    owed = min(owed, await repo.debit_room(intent))
    if owed <= 0:
        return "nothing to debit"
    await repo.debit(uid, "stripe_refund", charge["id"], owed, "card payment refunded", intent)
    return "debited"


async def _funds_withdrawn(conn: Conn, dispute: dict[str, Any]) -> str:
    """Stripe took the disputed amount back (not sent for an inquiry): debit it, once per dispute."""
    repo = PaymentRepository(conn)
    intent = _id(dispute.get("payment_intent"))
    uid = await _locked_owner(repo, intent)
    if uid is None or intent is None:
        return "ignored"
    if await repo.dispute_debited(str(dispute["id"])) is not None:
        return "already debited"
    owed = min(from_cents(int(dispute.get("amount") or 0)), await repo.debit_room(intent))
    if owed <= 0:
        return "nothing to debit"
    await repo.debit(uid, "dispute", str(dispute["id"]), owed,
                     f"card payment disputed ({dispute.get('reason') or 'no reason given'})", intent)
    return "debited"


async def _funds_reinstated(conn: Conn, dispute: dict[str, Any]) -> str:
    """The dispute was won: give back what its withdrawal debited, once (also on closed/won)."""
    repo = PaymentRepository(conn)
    debit = await repo.dispute_debited(str(dispute["id"]))
    if debit is None or not await repo.lock_account(debit["uid"]):
        return "nothing to reinstate"
    done = await repo.reverse_dispute(debit["uid"], str(dispute["id"]), int(debit["micros"]),
                                      debit["stripe_intent"], "card payment dispute won")
    return "credited" if done else "already credited"


async def _dispute_closed(conn: Conn, dispute: dict[str, Any]) -> str:
    if dispute.get("status") == "won":
        return await _funds_reinstated(conn, dispute)
    return "recorded"


async def _dispute_created(conn: Conn, dispute: dict[str, Any]) -> str:
    # Money moves on charge.dispute.funds_withdrawn: an inquiry withdraws nothing, and a
    # dispute whose funds Stripe withdraws says so in that event.
    log.warning("dispute %s opened (%s, %s) on %s", dispute.get("id"), dispute.get("status"),
                dispute.get("reason"), _id(dispute.get("payment_intent")))
    return "recorded"


async def _locked_owner(repo: PaymentRepository, payment_intent: str | None) -> str | None:
    """The account a payment of ours belongs to, locked (debits of one payment are capped
    together); None for an intent we did not make."""
    uid = await repo.uid_for_intent_or_customer(payment_intent, None) if payment_intent else None
    if uid is None or not await repo.lock_account(uid):
        return None
    return uid


def _id(v: Any) -> str | None:
    """An expandable Stripe field: an id, or the object itself."""
    if isinstance(v, dict):
        return str(v.get("id")) if v.get("id") else None
    return str(v) if v else None


_HANDLERS = {
    "payment_intent.succeeded": _succeeded,
    "payment_intent.payment_failed": _payment_failed,
    "charge.refunded": _refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.funds_withdrawn": _funds_withdrawn,
    "charge.dispute.funds_reinstated": _funds_reinstated,
    "charge.dispute.closed": _dispute_closed,
}
