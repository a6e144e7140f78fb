"""The billing pool's jobs: auto-recharge an account, and settle payments left open.

Without ``STRIPE_SECRET_KEY`` the pool starts and every job is a logged no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from billing.client import StripeGateway
from billing.context import Billing
from billing.payments import recharge
from billing.reconcile import reconcile
from workers.context import wctx

log = logging.getLogger("syncnode.billing")

Hook = Callable[[dict[str, Any]], Awaitable[None]]


def with_stripe(on_startup: Hook, on_shutdown: Hook) -> dict[str, Hook]:
    """The pool's hooks plus a Stripe client for its jobs."""

    async def startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        w = wctx(ctx)
        if w.settings.stripe_secret_key is None:
            log.warning("STRIPE_SECRET_KEY is unset: the billing pool will not charge cards")
            return
        ctx["billing"] = Billing(w.settings, w.db, StripeGateway(w.settings), w.queue)

    async def shutdown(ctx: dict[str, Any]) -> None:
        b = ctx.pop("billing", None)
        if isinstance(b, Billing):
            await b.stripe.aclose()
        await on_shutdown(ctx)

    return {"on_startup": startup, "on_shutdown": shutdown}


def _billing(ctx: dict[str, Any]) -> Billing | None:
    b = ctx.get("billing")
    return b if isinstance(b, Billing) else None


async def run_recharge(ctx: dict[str, Any], uid: str, need_micros: int = 0, retry: bool = False) -> str:
    b = _billing(ctx)
    if b is None:
        return "stripe off"
    out = await recharge(b, uid, need_micros, retry)
    return "skipped" if out is None else out.status


async def run_reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    b = _billing(ctx)
    if b is None:
        return {}
    return await reconcile(b)
