"""Reads of the ledger. Writes happen in the statements that move money (tasks, accounts)."""

from __future__ import annotations

import asyncpg

from storage.db import Conn


class LedgerRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def history(self, uid: str, limit: int, before: int | None) -> list[asyncpg.Record]:
        """Ledger rows newest first, keyset-paged by id (``before``), each with the balance after it.

        The balance after a row is today's balance minus every newer row, read in one snapshot
        (balance and ledger always commit together), so a page is exact however deep it is.
        """
        return list(await self.conn.fetch(
            """
            WITH newer AS (
                SELECT coalesce(sum(amount_micros), 0) AS s FROM ledger
                WHERE uid = $1 AND $3::bigint IS NOT NULL AND id >= $3
            ), page AS (
                SELECT l.id, l.amount_micros, l.kind, l.reason, l.created_at, l.stripe_id, t.job_id
                FROM ledger l LEFT JOIN tasks t ON t.id = l.task_id
                WHERE l.uid = $1 AND ($3::bigint IS NULL OR l.id < $3)
                ORDER BY l.id DESC LIMIT $2
            )
            SELECT page.*,
                   ((SELECT balance_micros FROM accounts WHERE uid = $1) - (SELECT s FROM newer)
                    - coalesce(sum(amount_micros) OVER (ORDER BY id DESC ROWS BETWEEN UNBOUNDED PRECEDING
                                                        AND 1 PRECEDING), 0))::bigint AS balance_after
            FROM page ORDER BY id DESC
            """,
            uid, limit, before,
        ))

    async def audit(self, uid: str) -> tuple[int, int]:
        """(balance on the account row, sum of its ledger): equal, always."""
        row = await self.conn.fetchrow(
            """
            SELECT a.balance_micros,
                   (SELECT coalesce(sum(amount_micros), 0) FROM ledger WHERE uid = a.uid) AS total
            FROM accounts a WHERE a.uid = $1
            """,
            uid,
        )
        assert row is not None
        return int(row["balance_micros"]), int(row["total"])

    async def totals_by_kind(self) -> dict[str, tuple[int, int]]:
        """Rows and micro-dollars per kind, over the whole ledger (for /metrics, cached there)."""
        rows = await self.conn.fetch(
            "SELECT kind, count(*) AS n, coalesce(sum(amount_micros), 0)::bigint AS micros FROM ledger GROUP BY kind",
            timeout=10,
        )
        return {r["kind"]: (int(r["n"]), int(r["micros"])) for r in rows}
