"""An account's billing profile: its Stripe Customer, default card and auto-recharge state."""

from __future__ import annotations

from typing import Any

import asyncpg

from storage.db import Conn


class BillingRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def profile(self, uid: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            """
            SELECT uid, email, balance_micros, stripe_customer_id, card, recharge_amount_micros,
                   recharge_below_micros, recharge_enabled, recharge_failures, recharge_retry_at,
                   recharge_off_reason, recharge_armed
            FROM accounts WHERE uid = $1
            """,
            uid,
        )

    async def set_customer(self, uid: str, customer_id: str) -> str:
        """Store the Customer id unless one was stored meanwhile; returns the one that counts."""
        v = await self.conn.fetchval(
            """
            WITH u AS (
                UPDATE accounts SET stripe_customer_id = $2
                WHERE uid = $1 AND stripe_customer_id IS NULL RETURNING stripe_customer_id
            )
            SELECT coalesce((SELECT stripe_customer_id FROM u),
                            (SELECT stripe_customer_id FROM accounts WHERE uid = $1))
            """,
            uid, customer_id,
        )
        return str(v)

    async def set_card(self, uid: str, card: dict[str, Any] | None, default_below_micros: int) -> None:
        """Save (or with None forget) the default card; saving arms auto-recharge's floor."""
        await self.conn.execute(
            """
            UPDATE accounts SET card = $2,
                   recharge_below_micros = coalesce(recharge_below_micros, $3)
            WHERE uid = $1
            """,
            uid, card, default_below_micros,
        )

    async def set_recharge(self, uid: str, amount_micros: int | None, below_micros: int | None,
                           enabled: bool | None, default_below_micros: int) -> None:
        """Change the auto-recharge settings given; switching it on forgets past failures."""
        await self.conn.execute(
            """
            UPDATE accounts SET
                recharge_amount_micros = coalesce($2, recharge_amount_micros),
                recharge_below_micros = coalesce($3, recharge_below_micros, $5),
                recharge_enabled = coalesce($4, recharge_enabled),
                recharge_failures = CASE WHEN $4 THEN 0 ELSE recharge_failures END,
                recharge_retry_at = CASE WHEN $4 THEN NULL ELSE recharge_retry_at END,
                recharge_off_reason = CASE WHEN $4 THEN NULL ELSE recharge_off_reason END
            WHERE uid = $1
            """,
            uid, amount_micros, below_micros, enabled, default_below_micros,
        )

    async def recharge_succeeded(self, uid: str) -> None:
        await self.conn.execute(
            """
            UPDATE accounts SET recharge_failures = 0, recharge_retry_at = NULL, recharge_off_reason = NULL
            WHERE uid = $1
            """,
            uid,
        )

    async def recharge_failed(self, uid: str, reason: str, max_attempts: int,
                              backoff_s: float) -> asyncpg.Record | None:
        """Count a failed recharge: back off exponentially, and after ``max_attempts`` switch
        auto-recharge off with the reason. Returns (recharge_failures, recharge_enabled, retry_at)."""
        return await self.conn.fetchrow(
            """
            UPDATE accounts SET
                recharge_failures = recharge_failures + 1,
                recharge_enabled = recharge_failures + 1 < $3,
                recharge_off_reason = CASE WHEN recharge_failures + 1 >= $3
                    THEN format('Auto-recharge switched off after %s failed attempts: %s',
                                recharge_failures + 1, $2::text)
                    ELSE recharge_off_reason END,
                recharge_retry_at = now() + make_interval(secs => $4 * 2 ^ recharge_failures)
            WHERE uid = $1
            RETURNING recharge_failures, recharge_enabled, recharge_retry_at
            """,
            uid, reason, max_attempts, backoff_s,
        )

    async def recharge_armed(self, uid: str) -> bool:
        return bool(await self.conn.fetchval("SELECT recharge_armed FROM accounts WHERE uid = $1", uid))
