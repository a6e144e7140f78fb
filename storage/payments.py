"""Card payments (top-ups, auto-recharges) and the ledger rows Stripe causes. All their SQL.

A payment row is written before Stripe is called and credits the ledger at most once: the
credit statement inserts a ledger row keyed by the PaymentIntent id under a unique index
(``ledger_one_credit_per_intent``), so the synchronous answer, a webhook and the
reconciliation may all report the same success and only the first one moves money.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from storage.db import Conn

OPEN = ("pending", "requires_action")


class PaymentRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def start_topup(self, uid: str, amount_micros: int, idempotency_key: str | None,
                          lease_s: float) -> asyncpg.Record | None:
        """Insert a pending top-up held by the caller; None when the Idempotency-Key is taken."""
        return await self.conn.fetchrow(
            """
            INSERT INTO payments (uid, kind, amount_micros, idempotency_key, lease_until)
            VALUES ($1, 'topup', $2, $3, now() + make_interval(secs => $4))
            ON CONFLICT DO NOTHING RETURNING *
            """,
            uid, amount_micros, idempotency_key, lease_s,
        )

    async def start_recharge(self, uid: str, default_amount_micros: int, need_micros: int,
                             lease_s: float, retry: bool = False, *, min_micros: int = 1,
                             max_micros: int = 2**62, cooldown_s: float = 0.0) -> asyncpg.Record | None:
        """Insert a pending auto-recharge if the account still needs one and none is in flight.

        During a backoff only the scheduled retry (``retry``) may start one. Within
        ``cooldown_s`` of the last credited recharge only a balance that cannot pay the call
        at hand (``need_micros``) starts one. The amount is held to whole cents within
        [min, max] whatever an older version stored.
        """
        return await self.conn.fetchrow(
            """
            INSERT INTO payments (uid, kind, amount_micros, lease_until)
            SELECT uid, 'auto_recharge',
                   greatest($6, least($7, coalesce(recharge_amount_micros, $2))) / 10000 * 10000,
                   now() + make_interval(secs => $4)
            FROM accounts
            WHERE uid = $1 AND recharge_armed
              AND balance_micros < greatest(recharge_below_micros, $3)
              AND ($5 OR recharge_retry_at IS NULL OR recharge_retry_at <= now())
              AND (recharge_succeeded_at IS NULL OR recharge_succeeded_at <= now() - make_interval(secs => $8)
                   OR balance_micros < $3)
            ON CONFLICT DO NOTHING RETURNING *
            """,
            uid, default_amount_micros, need_micros, lease_s, retry, min_micros, max_micros, cooldown_s,
        )

    async def by_idempotency_key(self, uid: str, key: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM payments WHERE uid = $1 AND idempotency_key = $2", uid, key)

    async def get(self, payment_id: int) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM payments WHERE id = $1", payment_id)

    async def by_intent(self, payment_intent: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM payments WHERE payment_intent = $1", payment_intent)

    async def claim(self, payment_id: int, lease_s: float) -> asyncpg.Record | None:
        """Take the lease on an open payment nobody else holds; None if held or settled."""
        return await self.conn.fetchrow(
            """
            UPDATE payments SET lease_until = now() + make_interval(secs => $2)
            WHERE id = $1 AND status IN ('pending', 'requires_action')
              AND (lease_until IS NULL OR lease_until < now())
            RETURNING *
            """,
            payment_id, lease_s,
        )

    async def release(self, payment_id: int) -> None:
        await self.conn.execute("UPDATE payments SET lease_until = NULL WHERE id = $1", payment_id)

    async def set_intent(self, payment_id: int, payment_intent: str, client_secret: str | None) -> None:
        await self.conn.execute(
            """
            UPDATE payments SET payment_intent = $2, client_secret = $3, updated_at = now()
            WHERE id = $1 AND payment_intent IS NULL
            """,
            payment_id, payment_intent, client_secret,
        )

    async def adopt_intent(self, payment_id: int, payment_intent: str, client_secret: str | None, *,
                           uid: str, customer: str | None, amount_micros: int) -> asyncpg.Record | None:
        """Give an open payment whose create answer was lost its PaymentIntent, but only the
        payment the intent was made for: same account, that account's Customer, same amount."""
        return await self.conn.fetchrow(
            """
            UPDATE payments p SET payment_intent = $2, client_secret = $3, updated_at = now()
            FROM accounts a
            WHERE p.id = $1 AND p.payment_intent IS NULL AND p.status IN ('pending', 'requires_action')
              AND p.uid = $4 AND a.uid = p.uid AND a.stripe_customer_id = $5 AND p.amount_micros = $6
            RETURNING p.*
            """,
            payment_id, payment_intent, client_secret, uid, customer, amount_micros,
        )

    async def mark(self, payment_id: int, status: str, error: str | None) -> bool:
        """Record a failure or a wait for the cardholder (a success is only ever ``credit``'s).

        True when this changed the status: what happened is counted once, however often it is seen.
        """
        v = await self.conn.fetchval(
            """
            WITH old AS (SELECT id, status FROM payments WHERE id = $1 FOR UPDATE)
            UPDATE payments p SET status = $2, error = $3, lease_until = NULL, updated_at = now()
            FROM old WHERE p.id = old.id AND old.status IN ('pending', 'requires_action')
            RETURNING old.status <> $2
            """,
            payment_id, status, error,
        )
        return bool(v)

    async def credit(self, payment_intent: str, received_micros: int) -> tuple[bool, int | None]:
        """Mark the payment succeeded and credit what Stripe received, once.
        (credited now?, balance after). A credited auto-recharge starts the cool-down."""
        row = await self.conn.fetchrow(
            """
            WITH p AS (
                UPDATE payments SET status = 'succeeded', error = NULL, lease_until = NULL,
                                    received_micros = $2, updated_at = now()
                WHERE payment_intent = $1
                RETURNING uid, kind, amount_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, stripe_id, reason)
                SELECT uid, $2, kind, $1,
                       CASE WHEN amount_micros = $2 THEN 'card payment'
                            ELSE format('card payment: Stripe received %s of %s micro-dollars',
                                        $2, amount_micros) END
                FROM p WHERE $2 > 0
                ON CONFLICT (stripe_id) WHERE kind IN ('topup', 'auto_recharge') DO NOTHING
                RETURNING uid, amount_micros, kind
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros + l.amount_micros,
                       recharge_succeeded_at = CASE WHEN l.kind = 'auto_recharge' THEN now()
                                                    ELSE recharge_succeeded_at END
                FROM l WHERE accounts.uid = l.uid
                RETURNING balance_micros
            )
            SELECT EXISTS (SELECT 1 FROM l) AS credited,
                   coalesce((SELECT balance_micros FROM a),
                            (SELECT balance_micros FROM accounts WHERE uid = (SELECT uid FROM p))) AS balance
            """,
            payment_intent, received_micros,
        )
        assert row is not None
        return bool(row["credited"]), row["balance"]

    async def open_older_than(self, seconds: float, limit: int,
                              after: tuple[Any, int] | None) -> list[asyncpg.Record]:
        """Unsettled payments older than ``seconds``, oldest first (keyset pages)."""
        return list(await self.conn.fetch(
            """
            SELECT * FROM payments
            WHERE status IN ('pending', 'requires_action')
              AND created_at < now() - make_interval(secs => $1)
              AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
            ORDER BY created_at, id LIMIT $2
            """,
            seconds, limit, after[0] if after else None, after[1] if after else 0,
        ))

    async def uid_for_intent_or_customer(self, payment_intent: str | None, customer: str | None) -> str | None:
        v = await self.conn.fetchval(
            """
            SELECT coalesce((SELECT uid FROM payments WHERE payment_intent = $1),
                            (SELECT uid FROM accounts WHERE stripe_customer_id = $2))
            """,
            payment_intent, customer,
        )
        return None if v is None else str(v)

    async def record_event(self, event_id: str, event_type: str) -> bool:
        """Store an event by its id; False when it was stored before (a replay)."""
        v = await self.conn.fetchval(
            "INSERT INTO stripe_events (id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
            event_id, event_type,
        )
        return v is not None

    async def debit(self, uid: str, kind: str, stripe_id: str, amount_micros: int, reason: str,
                    payment_intent: str) -> int:
        """A Stripe refund or dispute of ``payment_intent``: may take the balance below zero (by
        at most its own amount). Call under the account lock; returns what was debited."""
        v = await self.conn.fetchval(
            """
            WITH l AS (
                INSERT INTO ledger (uid, amount_micros, kind, stripe_id, reason, stripe_intent)
                VALUES ($1, -$4::bigint, $2, $3, $5, $6)
                ON CONFLICT (stripe_id) WHERE kind = 'dispute' DO NOTHING
                RETURNING amount_micros
            )
            UPDATE accounts SET balance_micros = balance_micros + l.amount_micros,
                                clawback_micros = clawback_micros - l.amount_micros
            FROM l WHERE uid = $1
            RETURNING balance_micros
            """,
            uid, kind, stripe_id, amount_micros, reason, payment_intent,
        )
        return 0 if v is None else amount_micros

    async def debit_room(self, payment_intent: str) -> int:
        """What refunds and disputes may still take back for a payment: what it credited, less
        what was taken back so far (net of won disputes). Call under the account lock."""
        v = await self.conn.fetchval(
            """
            SELECT coalesce(sum(amount_micros) FILTER (WHERE kind IN ('topup', 'auto_recharge')
                                                        AND stripe_id = $1), 0)
                 + coalesce(sum(amount_micros) FILTER (WHERE stripe_intent = $1), 0)
            FROM ledger WHERE stripe_id = $1 OR stripe_intent = $1
            """,
            payment_intent,
        )
        return max(0, int(v))

    async def dispute_debited(self, dispute_id: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT uid, -amount_micros AS micros, stripe_intent FROM ledger WHERE stripe_id = $1 AND kind = 'dispute'",
            dispute_id,
        )

    async def reverse_dispute(self, uid: str, dispute_id: str, amount_micros: int, payment_intent: str | None,
                              reason: str) -> bool:
        """Give a won dispute's debit back, once per dispute; the clawback floor rises with it."""
        v = await self.conn.fetchval(
            """
            WITH l AS (
                INSERT INTO ledger (uid, amount_micros, kind, stripe_id, reason, stripe_intent)
                VALUES ($1, $3, 'dispute_reversal', $2, $5, $4)
                ON CONFLICT (stripe_id) WHERE kind = 'dispute_reversal' DO NOTHING
                RETURNING amount_micros
            )
            UPDATE accounts SET balance_micros = balance_micros + l.amount_micros,
                                clawback_micros = greatest(0, clawback_micros - l.amount_micros)
            FROM l WHERE uid = $1
            RETURNING 1
            """,
            uid, dispute_id, amount_micros, payment_intent, reason,
        )
        return v is not None

    async def refunded_micros(self, charge_id: str) -> int:
        """What earlier refund events of this charge already debited (call under the account lock)."""
        v = await self.conn.fetchval(
            "SELECT coalesce(-sum(amount_micros), 0) FROM ledger WHERE stripe_id = $1 AND kind = 'stripe_refund'",
            charge_id,
        )
        return int(v)

    async def lock_account(self, uid: str) -> bool:
        return bool(await self.conn.fetchval("SELECT 1 FROM accounts WHERE uid = $1 FOR UPDATE", uid))
