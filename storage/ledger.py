"""Reads of the ledger. Writes happen in the statements that move money (tasks, accounts)."""

from __future__ import annotations

import asyncpg

from storage.db import Conn


class LedgerRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def history(self, uid: str, limit: int, offset: int) -> tuple[list[asyncpg.Record], int]:
        rows = await self.conn.fetch(
            """
            SELECT l.id, l.amount_micros, l.kind, l.reason, l.created_at, t.job_id
            FROM ledger l LEFT JOIN tasks t ON t.id = l.task_id
            WHERE l.uid = $1 ORDER BY l.id DESC LIMIT $2 OFFSET $3
            """,
            uid, limit, offset,
        )
        total = await self.conn.fetchval("SELECT count(*) FROM ledger WHERE uid = $1", uid)
        return list(rows), int(total)

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
