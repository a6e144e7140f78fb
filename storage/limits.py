"""Per-account limit overrides (``account_limits``). All SQL for them is here."""

from __future__ import annotations

from typing import Any

import orjson

from storage.db import Conn

# The sections an override object has, each a map of name → number.
SECTIONS = ("rate", "burst", "in_flight")


class LimitsRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def overrides(self, uid: str) -> dict[str, dict[str, float]]:
        raw = await self.conn.fetchval("SELECT overrides FROM account_limits WHERE uid = $1", uid)
        return _parse(raw)

    async def merge(self, uid: str, changes: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]] | None:
        """Apply ``changes`` (a None value removes that override); None if the account is unknown."""
        # Two statements, each atomic on its own: the first is idempotent, and the second merges on
        # the row itself, so two admins changing different limits of one account at once both win.
        await self.conn.execute(
            """
            INSERT INTO account_limits (uid) SELECT uid FROM accounts WHERE uid = $1
            ON CONFLICT (uid) DO NOTHING
            """, uid)
        row = await self.conn.fetchval(
            """
            UPDATE account_limits l SET overrides = (
                SELECT coalesce(jsonb_object_agg(s.key, s.merged), '{}'::jsonb) FROM (
                    SELECT k.key, jsonb_strip_nulls(coalesce(l.overrides -> k.key, '{}'::jsonb)
                                                    || coalesce($2::jsonb -> k.key, '{}'::jsonb)) AS merged
                    FROM unnest($3::text[]) AS k(key)
                ) s WHERE s.merged <> '{}'::jsonb
            ), updated_at = now()
            WHERE l.uid = $1
            RETURNING l.overrides
            """, uid, changes, list(SECTIONS))
        return None if row is None else _parse(row)


def _parse(raw: Any) -> dict[str, dict[str, float]]:
    if raw is None:
        return {}
    data = orjson.loads(raw) if isinstance(raw, str | bytes) else raw  # a pool decodes jsonb itself
    return {s: {k: float(v) for k, v in data.get(s, {}).items()} for s in SECTIONS if data.get(s)}
