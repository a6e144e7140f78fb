"""Card payments from first row to credit: top-ups, auto-recharges and their reconciliation.

The order that makes a crash harmless: (1) a payment row, held under a lease; (2) an
unconfirmed PaymentIntent, whose id is stored at once; (3) the off-session confirm, the only
call that moves money; (4) the credit, once per PaymentIntent id (a unique index). Whoever
takes up a payment later (a replay with the same Idempotency-Key, the reconciliation, a
webhook) continues from the step it reached and can never make a second payment.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import stripe

from billing.client import is_decline, message_of, needs_authentication, received_micros, translate
from billing.context import Billing
from billing.recharge import after_recharge
from jobs.errors import Conflict, PaymentRequired
from jobs.settings import to_micros
from storage.billing import BillingRepository
from storage.payments import OPEN, PaymentRepository

log = logging.getLogger("syncnode.billing")

NO_CARD = "No card on file: save one with POST /card/setup and POST /card"
NEEDS_AUTH = ("Your bank asks the cardholder to authenticate this payment (3-D Secure): finish it with "
              "the client_secret; the balance is credited when it succeeds")


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a payment stands after one drive."""

    payment_id: int
    status: str  # succeeded | requires_action | failed | pending
    amount_micros: int
    payment_intent: str | None
    client_secret: str | None = None
    error: str | None = None
    balance_micros: int | None = None


def outcome_of(row: asyncpg.Record, **kw: Any) -> Outcome:
    base: dict[str, Any] = {"payment_id": row["id"], "status": row["status"], "amount_micros": row["amount_micros"],
                            "payment_intent": row["payment_intent"], "client_secret": row["client_secret"],
                            "error": row["error"]}
    return Outcome(**{**base, **kw})


async def topup(b: Billing, uid: str, amount_micros: int, idempotency_key: str | None) -> Outcome:
    """Charge the default card now; a same-key repeat continues or replays the first one."""
    repo = PaymentRepository(b.db)
    row = await repo.start_topup(uid, amount_micros, idempotency_key, b.lease_seconds)
    if row is None:
        assert idempotency_key is not None
        return await _replay(b, uid, amount_micros, idempotency_key)
    return await drive(b, row)


async def recharge(b: Billing, uid: str, need_micros: int = 0, retry: bool = False) -> Outcome | None:
    """Recharge if the account still needs it and nothing else is recharging it; None if not."""
    s = b.settings
    row = await PaymentRepository(b.db).start_recharge(
        uid, to_micros(s.recharge_amount), need_micros, b.lease_seconds, retry,
        min_micros=to_micros(s.topup_min), max_micros=to_micros(s.topup_max), cooldown_s=s.recharge_cooldown_seconds)
    if row is None:
        return None
    return await drive(b, row)


async def _replay(b: Billing, uid: str, amount_micros: int, key: str) -> Outcome:
    repo = PaymentRepository(b.db)
    deadline = asyncio.get_running_loop().time() + b.lease_seconds
    while True:
        row = await repo.by_idempotency_key(uid, key)
        assert row is not None
        if row["amount_micros"] != amount_micros:
            raise Conflict("Idempotency-Key was already used with a different amount")
        if row["status"] not in OPEN or row["status"] == "requires_action":
            return await _settled(b, row)
        claimed = await repo.claim(row["id"], b.lease_seconds)
        if claimed is not None:  # the first request gave up on it (502, crash): carry on from there
            return await drive(b, claimed)
        if asyncio.get_running_loop().time() > deadline:
            return outcome_of(row)
        await asyncio.sleep(0.05)


async def _settled(b: Billing, row: asyncpg.Record) -> Outcome:
    balance = await BillingRepository(b.db).profile(row["uid"])
    return outcome_of(row, balance_micros=None if balance is None else balance["balance_micros"])


async def drive(b: Billing, row: asyncpg.Record) -> Outcome:
    """Take a payment we hold the lease on as far as Stripe lets us, then settle it.

    Stripe unreachable: the lease is dropped and the row stays pending (a retry or the
    reconciliation continues it) and the caller gets the 502.
    """
    repo = PaymentRepository(b.db)
    try:
        pi = await ensure_intent(b, row)
        if pi.status == "requires_confirmation":
            pi = await b.stripe.confirm_off_session(pi.id)
    except stripe.StripeError as e:
        return await _failed_call(b, row, e)
    except PaymentRequired:  # the card was removed since the payment started
        changed = await repo.mark(row["id"], "failed", NO_CARD)
        return await after_settled(b, outcome_of(row, status="failed", error=NO_CARD), changed)
    except BaseException:
        await repo.release(row["id"])
        raise
    return await settle(b, row, pi)


async def ensure_intent(b: Billing, row: asyncpg.Record) -> Any:
    if row["payment_intent"] is not None:
        return await b.stripe.retrieve_intent(row["payment_intent"])
    profile = await BillingRepository(b.db).profile(row["uid"])
    if profile is None or profile["card"] is None or profile["stripe_customer_id"] is None:
        raise PaymentRequired(NO_CARD)
    pi = await b.stripe.create_intent(
        amount_micros=row["amount_micros"], customer=profile["stripe_customer_id"],
        payment_method=profile["card"]["payment_method"],
        metadata={"syncnode_uid": row["uid"], "syncnode_payment": str(row["id"]), "syncnode_kind": row["kind"]},
        idempotency_key=f"syncnode-payment-{row['uid']}-{row['id']}")
    await PaymentRepository(b.db).set_intent(row["id"], pi.id, pi.client_secret)
    return pi


async def _failed_call(b: Billing, row: asyncpg.Record, e: stripe.StripeError) -> Outcome:
    repo = PaymentRepository(b.db)
    fresh = await repo.get(row["id"])
    assert fresh is not None
    if needs_authentication(e):
        changed = await repo.mark(row["id"], "requires_action", NEEDS_AUTH)
        return await after_settled(b, outcome_of(fresh, status="requires_action", error=NEEDS_AUTH), changed)
    if is_decline(e):
        msg = f"Card declined: {message_of(e)}"
        changed = await repo.mark(row["id"], "failed", msg)
        return await after_settled(b, outcome_of(fresh, status="failed", error=msg), changed)
    await repo.release(row["id"])
    log.warning("payment %s: Stripe call failed (%s); left pending", row["id"], e)
    raise translate(e, "charge the card") from e


async def settle(b: Billing, row: asyncpg.Record, pi: Any) -> Outcome:
    """Record what the PaymentIntent says: credit, wait for the cardholder, or fail."""
    repo = PaymentRepository(b.db)
    status = pi.status
    if status == "succeeded":
        credited, balance = await credit(repo, row, pi)
        out = outcome_of(row, status="succeeded", payment_intent=pi.id, error=None, balance_micros=balance)
        return await after_settled(b, out, credited)
    if status == "requires_action":
        changed = await repo.mark(row["id"], "requires_action", NEEDS_AUTH)
        out = outcome_of(row, status="requires_action", payment_intent=pi.id, client_secret=pi.client_secret,
                         error=NEEDS_AUTH)
        return await after_settled(b, out, changed)
    if status in ("requires_payment_method", "canceled"):
        err = getattr(pi, "last_payment_error", None)
        msg = f"Card declined: {err.message}" if err and getattr(err, "message", None) else "The payment failed"
        changed = await repo.mark(row["id"], "failed", msg)
        return await after_settled(b, outcome_of(row, status="failed", payment_intent=pi.id, error=msg), changed)
    # processing / requires_confirmation: Stripe has not decided; the reconciliation will look again.
    await repo.release(row["id"])
    return outcome_of(row, status="pending", payment_intent=pi.id)


async def credit(repo: PaymentRepository, row: asyncpg.Record, pi: Any) -> tuple[bool, int | None]:
    """Credit what Stripe received; a difference from what we asked for is logged and kept
    (the payment's ``received_micros`` and the ledger row's reason), never passed over."""
    received = received_micros(pi)
    pid = pi["id"] if isinstance(pi, dict) else pi.id
    if received != row["amount_micros"]:
        log.warning("payment %s (%s): Stripe received %s micro-dollars, %s were asked for; crediting what "
                    "was received", row["id"], pid, received, row["amount_micros"])
    return await repo.credit(pid, received)


async def after_settled(b: Billing, out: Outcome, changed: bool) -> Outcome:
    """Auto-recharge bookkeeping, once per change of a payment's state; a top-up needs none."""
    if not changed:
        return out
    row = await PaymentRepository(b.db).get(out.payment_id)
    if row is None or row["kind"] != "auto_recharge":
        return out
    await after_recharge(b, row["uid"], out)
    return out
