"""Tasks: the durable record of every call, and the statements that finish and refund them
(the charge that creates one is in storage/charges.py).

Each money-moving statement is a single SQL statement (CTEs), so the task row, the ledger row
and the balance change commit together in one round trip, and the balance check is the row
lock on the account (``balance_micros >= price``), so races cannot overdraw it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from jobs.results import Upstream
from storage.charges import TaskCharges

TERMINAL = ("completed", "failed", "canceled")

class TaskRepository(TaskCharges):
    """A task's charge (``TaskCharges``), then its life: read, run, finish, list, sweep."""

    async def by_idempotency_key(self, uid: str, key: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM tasks WHERE uid = $1 AND idempotency_key = $2", uid, key
        )

    async def by_job_id(self, job_id: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM tasks WHERE job_id = $1", job_id)

    async def for_worker(self, job_id: str, key_name: str | None) -> asyncpg.Record | None:
        """The task with the ciphertext of the provider key it needs, in one round trip."""
        return await self.conn.fetchrow(
            """
            SELECT t.id, t.uid, t.kind, t.model, t.request, t.status, t.provider_id,
                   t.cost_micros, t.created_at, pk.ciphertext
            FROM tasks t LEFT JOIN provider_keys pk ON pk.uid = t.uid AND pk.name = $2
            WHERE t.job_id = $1
            """,
            job_id, key_name,
        )

    async def for_worker_many(self, job_ids: list[str], key_name: str | None) -> list[asyncpg.Record]:
        """``for_worker`` for several jobs in one round trip (rows carry their job_id)."""
        return list(await self.conn.fetch(
            """
            SELECT t.job_id, t.id, t.uid, t.kind, t.model, t.request, t.status, t.provider_id,
                   t.cost_micros, t.created_at, pk.ciphertext
            FROM tasks t LEFT JOIN provider_keys pk ON pk.uid = t.uid AND pk.name = $2
            WHERE t.job_id = ANY($1::text[])
            """,
            job_ids, key_name,
        ))

    async def complete_many(self, items: list[tuple[str, Any]]) -> list[asyncpg.Record]:
        """``complete`` for several tasks in one statement; returns the rows it finished."""
        return list(await self.conn.fetch(
            """
            UPDATE tasks t SET status = 'completed', output = v.output, updated_at = now()
            FROM unnest($1::text[], $2::jsonb[]) AS v(job_id, output)
            WHERE t.job_id = v.job_id AND t.status NOT IN ('completed', 'failed', 'canceled')
            RETURNING t.job_id, t.id, t.uid, t.model, t.cost_micros, t.updated_at
            """,
            [job_id for job_id, _ in items], [output for _, output in items],
        ))

    async def complete(self, job_id: str, output: Any) -> asyncpg.Record | None:
        """Mark completed unless already terminal (a re-run job finishes a task at most once)."""
        return await self.conn.fetchrow(
            """
            UPDATE tasks SET status = 'completed', output = $2, updated_at = now()
            WHERE job_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')
            RETURNING id, uid, model, cost_micros, updated_at
            """,
            job_id, output,
        )

    async def finish_unpaid(self, job_id: str, status: str, error: str, *, client_error: bool | None = None,
                            upstream: Upstream | None = None) -> asyncpg.Record | None:
        """Fail or cancel a task and refund its charge, once; None if it was already terminal.

        ``client_error`` and ``upstream`` are kept as the worker's result says them, so that a
        replay answers from the row (``TaskResult.from_row``) as the first request was answered."""
        up = upstream or Upstream(None)
        return await self.conn.fetchrow(
            """
            WITH t AS (
                UPDATE tasks SET status = $2, error = $3, refunded = true, updated_at = now(),
                                 client_error = $4, upstream_status = $5, upstream_retry_after = $6,
                                 upstream_code = $7, upstream_param = $8
                WHERE job_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')
                RETURNING id, uid, cost_micros, model, updated_at
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, task_id)
                SELECT uid, cost_micros, 'refund', id FROM t WHERE cost_micros > 0
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros + t.cost_micros
                FROM t WHERE accounts.uid = t.uid
            )
            SELECT * FROM t
            """,
            job_id, status, error, client_error, up.status, up.retry_after, up.code, up.param,
        )

    async def withdraw(self, job_id: str, error: str) -> asyncpg.Record | None:
        """Undo a charge whose enqueue failed (the caller answers 503): fail and refund the task
        and free its Idempotency-Key, so a retry with the same key runs afresh. Conditional like
        every finish: None if the task already ended (a worker got the job after all)."""
        return await self.conn.fetchrow(
            """
            WITH t AS (
                UPDATE tasks SET status = 'failed', error = $2, refunded = true, idempotency_key = NULL,
                                 request_hash = NULL, updated_at = now()
                WHERE job_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')
                RETURNING id, uid, cost_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, task_id)
                SELECT uid, cost_micros, 'refund', id FROM t WHERE cost_micros > 0
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros + t.cost_micros
                FROM t WHERE accounts.uid = t.uid
            )
            SELECT * FROM t
            """,
            job_id, error,
        )

    async def fail_charged(self, job_id: str, error: str, output: Any) -> asyncpg.Record | None:
        """Fail a task and keep its charge (a stream that broke after the client got text), once."""
        return await self.conn.fetchrow(
            """
            UPDATE tasks SET status = 'failed', error = $2, output = $3, updated_at = now()
            WHERE job_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')
            RETURNING id, uid, cost_micros, model, updated_at
            """,
            job_id, error, output,
        )

    async def set_running(self, job_id: str, provider_id: str | None = None) -> None:
        await self.conn.execute(
            """
            UPDATE tasks SET status = 'running', provider_id = coalesce($2, provider_id), updated_at = now()
            WHERE job_id = $1 AND status IN ('queued', 'running')
            """,
            job_id, provider_id,
        )

    async def page(self, uid: str, limit: int, offset: int, kind: str | None = None,
                   statuses: list[str] | None = None) -> tuple[list[asyncpg.Record], int]:
        """One page, newest first; kind / statuses filter when given (the web UI's task list)."""
        where = "uid = $1 AND deleted_at IS NULL AND ($4::text IS NULL OR kind = $4) " \
                "AND ($5::text[] IS NULL OR status = ANY($5))"
        rows = await self.conn.fetch(
            f"""
            SELECT id, job_id, kind, model, prompt, status, cost_micros, refunded, created_at
            FROM tasks WHERE {where}
            ORDER BY id DESC LIMIT $2 OFFSET $3
            """,
            uid, limit, offset, kind, statuses,
        )
        total = await self.conn.fetchval(
            f"SELECT count(*) FROM tasks WHERE {where.replace('$4', '$2').replace('$5', '$3')}",
            uid, kind, statuses,
        )
        return list(rows), int(total)

    async def get(self, uid: str, task_id: int) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM tasks WHERE id = $1 AND uid = $2 AND deleted_at IS NULL", task_id, uid
        )

    async def soft_delete(self, uid: str, task_id: int) -> str | None:
        """Hide a finished task from listings; returns its status, or None if not found.

        Rows stay because ledger rows point at them (the ledger is never rewritten).
        """
        status = await self.conn.fetchval(
            """
            UPDATE tasks SET deleted_at = now()
            WHERE id = $1 AND uid = $2 AND deleted_at IS NULL AND status IN ('completed', 'failed', 'canceled')
            RETURNING status
            """,
            task_id, uid,
        )
        if status is not None:
            return str(status)
        current = await self.conn.fetchval(
            "SELECT status FROM tasks WHERE id = $1 AND uid = $2 AND deleted_at IS NULL", task_id, uid
        )
        return None if current is None else str(current)

    async def stale(self, pool: str, older_than_s: float, limit: int,
                    after: tuple[Any, int] | None = None) -> list[asyncpg.Record]:
        """Queued tasks of a pool older than the given age, oldest first: the sweeper's candidates.

        ``after`` is the (created_at, id) of the last row of the previous page (keyset paging),
        so a backlog of old queued jobs cannot hide a lost one behind it.
        """
        return list(await self.conn.fetch(
            """
            SELECT id, job_id, uid, kind, status, created_at FROM tasks
            WHERE pool = $1 AND status = 'queued'
              AND created_at < now() - make_interval(secs => $2)
              AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5))
            ORDER BY created_at, id LIMIT $3
            """,
            pool, older_than_s, limit, after[0] if after else None, after[1] if after else 0,
        ))
