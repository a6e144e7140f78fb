"""Fire-and-poll state of media tasks (table ``predictions``). All SQL for it is here.

The prediction id itself is ``tasks.provider_id`` (set with ``TaskRepository.set_running``);
terminal transitions go through ``TaskRepository.complete`` / ``finish_unpaid``, whose
conditional UPDATEs make a terminal status final whatever arrives late or twice.
"""

from __future__ import annotations

from typing import Any

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

_STATE_SQL = """
SELECT t.job_id, t.id, t.uid, t.kind, t.model, {request}, t.status, t.provider_id, t.cost_micros,
       t.created_at, t.updated_at, p.create_started_at, p.webhook_secret,
       coalesce(p.cancel_requested, false) AS cancel_requested, p.provider_status, pk.ciphertext
FROM tasks t
LEFT JOIN predictions p ON p.job_id = t.job_id
LEFT JOIN provider_keys pk ON pk.uid = t.uid AND pk.name = 'replicate_key'
WHERE t.job_id {where}
"""


class PredictionRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def state(self, job_id: str, *, with_request: bool = True) -> asyncpg.Record | None:
        """The task joined with its prediction row and the account's Replicate key.

        ``request`` (model and input: up to two 15 MiB base64 images for a face swap) is only
        read when asked for: the create job needs it, the many polls of a prediction do not."""
        return await self.conn.fetchrow(
            _STATE_SQL.format(request="t.request" if with_request else "NULL::jsonb AS request", where="= $1"),
            job_id)

    async def states(self, job_ids: list[str]) -> list[asyncpg.Record]:
        """``state(with_request=False)`` of several tasks in one round trip (rows carry job_id)."""
        return list(await self.conn.fetch(
            _STATE_SQL.format(request="NULL::jsonb AS request", where="= ANY($1::text[])"), job_ids))

    async def begin_create(self, job_id: str, webhook_secret: bytes | None) -> bool:
        """Record that a create POST is about to be sent. False if one was already started."""
        row = await self.conn.fetchrow(
            """
            INSERT INTO predictions (job_id, create_started_at, webhook_secret) VALUES ($1, now(), $2)
            ON CONFLICT (job_id) DO UPDATE SET create_started_at = now(),
                webhook_secret = EXCLUDED.webhook_secret, updated_at = now()
                WHERE predictions.create_started_at IS NULL
            RETURNING job_id
            """,
            job_id, webhook_secret,
        )
        return row is not None

    async def request_cancel(self, job_id: str) -> None:
        await self.conn.execute(
            """
            INSERT INTO predictions (job_id, cancel_requested) VALUES ($1, true)
            ON CONFLICT (job_id) DO UPDATE SET cancel_requested = true, updated_at = now()
            """,
            job_id,
        )

    async def polled(self, job_id: str, provider_status: str) -> None:
        await self.conn.execute(
            """
            UPDATE predictions SET polls = polls + 1, provider_status = $2, updated_at = now()
            WHERE job_id = $1
            """,
            job_id, provider_status,
        )

    async def polled_many(self, items: list[tuple[str, str]]) -> None:
        """``polled`` for several predictions in one statement (job ids are unique in a batch)."""
        await self.conn.execute(
            """
            UPDATE predictions p SET polls = p.polls + 1, provider_status = v.status, updated_at = now()
            FROM unnest($1::text[], $2::text[]) AS v(job_id, status) WHERE p.job_id = v.job_id
            """,
            [j for j, _ in items], [st for _, st in items],
        )

    async def claimed(self, provider_ids: list[str]) -> set[str]:
        """Which of these prediction ids already belong to a task."""
        rows = await self.conn.fetch("SELECT provider_id FROM tasks WHERE provider_id = ANY($1::text[])",
                                     provider_ids)
        return {r["provider_id"] for r in rows}

    async def webhook_secret(self, job_id: str) -> tuple[str, bytes | None] | None:
        """(uid, encrypted webhook secret) of a task, or None if there is no such task."""
        row = await self.conn.fetchrow(
            """
            SELECT t.uid, p.webhook_secret FROM tasks t LEFT JOIN predictions p ON p.job_id = t.job_id
            WHERE t.job_id = $1
            """,
            job_id,
        )
        return None if row is None else (row["uid"], row["webhook_secret"])

    async def running(self, pool: str, quiet_for_s: float, limit: int,
                      after: tuple[Any, int] | None = None) -> list[asyncpg.Record]:
        """Running predictions not touched for a while: the sweeper checks their poll chain.

        Keyset-paged by (updated_at, id): polls do not touch ``updated_at``, so without paging
        the same oldest page would be checked forever and a lost chain behind it never found.
        """
        return list(await self.conn.fetch(
            """
            SELECT job_id, uid, id, kind, updated_at FROM tasks
            WHERE pool = $1 AND status = 'running' AND provider_id IS NOT NULL
              AND updated_at < now() - make_interval(secs => $2)
              AND ($4::timestamptz IS NULL OR (updated_at, id) > ($4, $5))
            ORDER BY updated_at, id LIMIT $3
            """,
            pool, quiet_for_s, limit, after[0] if after else None, after[1] if after else 0,
        ))

    async def complete(self, job_id: str, output: Any, hosting_error: str | None) -> asyncpg.Record | None:
        """Complete unless already terminal; a re-hosting failure is kept in ``error``."""
        return await self.conn.fetchrow(
            """
            UPDATE tasks SET status = 'completed', output = $2, error = $3, updated_at = now()
            WHERE job_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')
            RETURNING id, uid, model, cost_micros, updated_at
            """,
            job_id, output, hosting_error,
        )

