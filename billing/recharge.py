"""Auto-recharge: the billing pool charges the saved card when a charge leaves the balance low.

The ingress only enqueues ``recharge_job(uid)`` (one deterministic job id per account, so arq
keeps at most one queued); the payment row's partial unique index keeps at most one in flight
whatever else enqueues it. Failures back off and, after ``recharge_max_attempts``, switch
auto-recharge off with the reason, which GET /billing-threshold shows.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from billing.context import Billing
from jobs.names import BILLING_RECHARGE
from jobs.queue import Job
from storage.billing import BillingRepository

if TYPE_CHECKING:
    from billing.payments import Outcome

log = logging.getLogger("syncnode.billing")


def recharge_job(uid: str, need_micros: int = 0, attempt: int = 0, defer_ms: int = 0) -> Job:
    """The job that recharges ``uid``; retries get their own ids (the first one is still running)."""
    if attempt == 0:
        return Job("billing", BILLING_RECHARGE, f"recharge:{uid}", (uid, need_micros))
    return Job("billing", BILLING_RECHARGE, f"recharge:{uid}:retry:{attempt}", (uid, need_micros, True),
               defer_ms=defer_ms)


async def after_recharge(b: Billing, uid: str, out: Outcome) -> None:
    """Count a finished recharge: success resets the failures, a failure backs off or switches off."""
    repo = BillingRepository(b.db)
    if out.status == "succeeded":
        await repo.recharge_succeeded(uid)
        return
    if out.status not in ("failed", "requires_action"):
        return
    reason = out.error or "the payment failed"
    row = await repo.recharge_failed(uid, reason, b.settings.recharge_max_attempts,
                                     b.settings.recharge_backoff_seconds)
    if row is None:
        return
    if not row["recharge_enabled"]:
        log.warning("auto-recharge of %s switched off: %s", uid, reason)
        return
    defer_ms = max(0, int((row["recharge_retry_at"].timestamp() - time.time()) * 1000))
    await b.queue.enqueue(recharge_job(uid, attempt=row["recharge_failures"], defer_ms=defer_ms))
