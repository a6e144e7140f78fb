"""Tasks: the durable record of every call, and the statements that charge and refund them.

Each money-moving statement is a single SQL statement (CTEs), so the task row, the ledger row
and the balance change commit together in one round trip, and the balance check is the row
lock on the account (``balance_micros >= price``), so races cannot overdraw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from storage.db import Conn

TERMINAL = ("completed", "failed", "canceled")

# A charge statement's first CTE, referenced by its final SELECT (so it runs): 'off' commits this
# one transaction without waiting for its WAL flush, NULL keeps the server's setting. Only for a
# caller whose answer waits on a later synchronous commit (``storage.task_batches.Tasks.charge``).
_COMMIT_MODE = """commit_mode AS (SELECT set_config('synchronous_commit',
                coalesce({p}::text, current_setting('synchronous_commit')), true) AS mode)"""


def _flush(durable: bool) -> str | None:
    return None if durable else "off"


@dataclass(frozen=True, slots=True)
class NewTask:
    job_id: str
    uid: str
    kind: str
    pool: str
    model: str | None
    prompt: str | None
    request: dict[str, Any]
    cost_micros: int
    # The stored provider key the task needs; the charge fails without it.
    key_name: str | None
    idempotency_key: str | None = None
    request_hash: bytes | None = None
    # Completion webhook (ingress/hooks.py); such tasks are charged one by one (charge_and_create).
    webhook: str | None = None
    webhook_events: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    task_id: int | None
    account_exists: bool
    has_key: bool
    # The charge left the balance under the account's auto-recharge floor (and a card is on file).
    recharge: bool = False
    # False: committed without waiting for its WAL flush (asked for with durable=False).
    durable: bool = True


@dataclass(frozen=True, slots=True)
class Affordability:
    account_exists: bool
    has_key: bool
    covers: bool
    # How many calls at this price the balance covers now.
    calls: int


class TaskRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def charge_and_create(self, t: NewTask, *, durable: bool = True) -> ChargeOutcome:
        """Debit the price, insert the task and its ledger row, or do nothing at all.
        ``durable=False``: commit without waiting for the WAL flush (see ``_COMMIT_MODE``).

        Raises asyncpg.UniqueViolationError if another request took the idempotency key first.
        """
        row = await self.conn.fetchrow(
            f"""
            WITH {_COMMIT_MODE.format(p="$14")}, k AS (
                SELECT ($9::text IS NULL OR EXISTS (
                    SELECT 1 FROM provider_keys WHERE uid = $1 AND name = $9)) AS ok
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros - $3
                WHERE uid = $1 AND balance_micros >= $3 AND (SELECT ok FROM k)
                RETURNING uid, recharge_armed AND balance_micros < recharge_below_micros AS low
            ), t AS (
                INSERT INTO tasks (job_id, uid, kind, pool, model, prompt, request, cost_micros,
                                   idempotency_key, request_hash, webhook, webhook_events)
                SELECT $2, uid, $4, $5, $6, $7, $8, $3, $10, $11, $12, $13 FROM a
                RETURNING id
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, task_id)
                SELECT $1, -$3::bigint, 'charge', id FROM t
            )
            SELECT (SELECT id FROM t) AS task_id,
                   EXISTS (SELECT 1 FROM accounts WHERE uid = $1) AS account_exists,
                   (SELECT ok FROM k) AS has_key,
                   coalesce((SELECT low FROM a), false) AS low, (SELECT mode FROM commit_mode) AS mode
            """,
            t.uid, t.job_id, t.cost_micros, t.kind, t.pool, t.model, t.prompt, t.request,
            t.key_name, t.idempotency_key, t.request_hash, t.webhook,
            list(t.webhook_events) if t.webhook_events is not None else None, _flush(durable),
        )
        assert row is not None
        return ChargeOutcome(row["task_id"], row["account_exists"], row["has_key"], row["low"], row["mode"] != "off")

    async def charge_many(self, uid: str, items: list[NewTask], *, durable: bool = True) -> list[ChargeOutcome]:
        """``charge_and_create`` for several tasks of one account in one statement.

        Tasks are taken in order while the balance covers them (running sum), so a batch can
        part-succeed exactly as the same requests one by one would. No idempotency keys here:
        one conflicting key would abort the whole batch (those requests use the single path).
        """
        if len(items) == 1:
            # An idle account's batch of one: the single-row statement is the cheaper plan.
            return [await self.charge_and_create(items[0], durable=durable)]
        rows = await self.conn.fetch(
            f"""
            WITH {_COMMIT_MODE.format(p="$10")}, req AS (
                SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::jsonb[], $8::bigint[], $9::text[])
                    WITH ORDINALITY AS r(job_id, kind, pool, model, prompt, request, cost, key_name, ord)
            ), keyed AS (
                SELECT req.*, (key_name IS NULL OR EXISTS (
                    SELECT 1 FROM provider_keys pk WHERE pk.uid = $1 AND pk.name = req.key_name)) AS has_key
                FROM req
            ), acct AS (
                SELECT balance_micros FROM accounts WHERE uid = $1 FOR UPDATE
            ), fit AS (
                SELECT keyed.*, sum(cost) FILTER (WHERE has_key) OVER (ORDER BY ord) AS running FROM keyed
            ), ok AS (
                SELECT fit.* FROM fit, acct WHERE fit.has_key AND fit.running <= acct.balance_micros
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros - (SELECT sum(cost) FROM ok)
                WHERE uid = $1 AND EXISTS (SELECT 1 FROM ok)
                RETURNING recharge_armed AND balance_micros < recharge_below_micros AS low
            ), t AS (
                INSERT INTO tasks (job_id, uid, kind, pool, model, prompt, request, cost_micros)
                SELECT job_id, $1, kind, pool, model, prompt, request, cost FROM ok ORDER BY ord
                RETURNING id, job_id, cost_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, task_id)
                SELECT $1, -cost_micros, 'charge', id FROM t
            )
            SELECT keyed.ord, keyed.has_key, t.id AS task_id, EXISTS (SELECT 1 FROM acct) AS account_exists,
                   coalesce((SELECT low FROM a), false) AS low, (SELECT mode FROM commit_mode) AS mode
            FROM keyed LEFT JOIN t USING (job_id) ORDER BY keyed.ord
            """,
            uid, [i.job_id for i in items], [i.kind for i in items], [i.pool for i in items],
            [i.model for i in items], [i.prompt for i in items], [i.request for i in items],
            [i.cost_micros for i in items], [i.key_name for i in items], _flush(durable),
        )
        return [ChargeOutcome(r["task_id"], r["account_exists"], r["has_key"], r["low"], r["mode"] != "off")
                for r in rows]

    async def charge_batch(self, items: list[NewTask], *, durable: bool = True) -> list[ChargeOutcome]:
        """``charge_and_create`` for several tasks, of one account or many, in one statement
        (one commit, one fsync for the batch).

        Each account's tasks are taken in order while its balance covers them (a running sum per
        account), so a batch can part-succeed exactly as the same requests one by one would, if
        an account's tasks in a batch have one price (the caller batches by price). Account rows
        are locked in uid order, so two batches never wait on each other in a cycle. No
        idempotency keys here: one conflicting key would abort the whole batch (those requests
        use the single path).
        """
        if len({i.uid for i in items}) == 1:
            # One account (a hot account, or an idle one's batch of one): the cheaper plans.
            return await self.charge_many(items[0].uid, items, durable=durable)
        rows = await self.conn.fetch(
            f"""
            WITH {_COMMIT_MODE.format(p="$10")}, req AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::jsonb[], $8::bigint[], $9::text[])
                    WITH ORDINALITY AS r(uid, job_id, kind, pool, model, prompt, request, cost, key_name, ord)
            ), keyed AS (
                SELECT req.*, (key_name IS NULL OR EXISTS (
                    SELECT 1 FROM provider_keys pk WHERE pk.uid = req.uid AND pk.name = req.key_name)) AS has_key
                FROM req
            ), acct AS (
                SELECT uid, balance_micros FROM accounts WHERE uid IN (SELECT uid FROM req)
                ORDER BY uid FOR UPDATE
            ), fit AS (
                SELECT keyed.*, sum(cost) FILTER (WHERE has_key) OVER (PARTITION BY uid ORDER BY ord) AS running
                FROM keyed
            ), ok AS (
                SELECT fit.* FROM fit JOIN acct USING (uid) WHERE fit.has_key AND fit.running <= acct.balance_micros
            ), spent AS (
                SELECT uid, sum(cost) AS total FROM ok GROUP BY uid
            ), a AS (
                UPDATE accounts SET balance_micros = balance_micros - spent.total FROM spent
                WHERE accounts.uid = spent.uid
                RETURNING accounts.uid, recharge_armed AND balance_micros < recharge_below_micros AS low
            ), t AS (
                INSERT INTO tasks (job_id, uid, kind, pool, model, prompt, request, cost_micros)
                SELECT job_id, uid, kind, pool, model, prompt, request, cost FROM ok ORDER BY ord
                RETURNING id, job_id, uid, cost_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, task_id)
                SELECT uid, -cost_micros, 'charge', id FROM t
            )
            SELECT keyed.ord, keyed.has_key, t.id AS task_id, acct.uid IS NOT NULL AS account_exists,
                   coalesce(a.low, false) AS low, (SELECT mode FROM commit_mode) AS mode
            FROM keyed LEFT JOIN t USING (job_id) LEFT JOIN acct ON acct.uid = keyed.uid
                 LEFT JOIN a ON a.uid = keyed.uid
            ORDER BY keyed.ord
            """,
            [i.uid for i in items], [i.job_id for i in items], [i.kind for i in items], [i.pool for i in items],
            [i.model for i in items], [i.prompt for i in items], [i.request for i in items],
            [i.cost_micros for i in items], [i.key_name for i in items], _flush(durable),
        )
        return [ChargeOutcome(r["task_id"], r["account_exists"], r["has_key"], r["low"], r["mode"] != "off")
                for r in rows]

    async def can_pay(self, uid: str, price_micros: int, key_name: str | None) -> Affordability:
        """Whether a charge of ``price_micros`` would go through now (read only: the charge
        statement stays the guard). Lets a route refuse before it does costly work."""
        row = await self.conn.fetchrow(
            """
            SELECT a.balance_micros >= $2 AS covers, greatest(a.balance_micros, 0) / $2 AS calls,
                   ($3::text IS NULL OR EXISTS (
                       SELECT 1 FROM provider_keys WHERE uid = $1 AND name = $3)) AS has_key
            FROM accounts a WHERE a.uid = $1
            """, uid, price_micros, key_name)
        if row is None:
            return Affordability(False, False, False, 0)
        return Affordability(True, row["has_key"], row["covers"], int(row["calls"]))

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

    async def finish_unpaid(self, job_id: str, status: str, error: str) -> asyncpg.Record | None:
        """Fail or cancel a task and refund its charge, once; None if it was already terminal."""
        return await self.conn.fetchrow(
            """
            WITH t AS (
                UPDATE tasks SET status = $2, error = $3, refunded = true, updated_at = now()
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
            job_id, status, error,
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
