"""Charges: the statements that debit an account and create its task in one commit.

Each is a single SQL statement (CTEs), so the task row, the ledger row and the balance change
commit together in one round trip, and the balance check is the row lock on the account
(``balance_micros >= price``), so races cannot overdraw it. ``TaskRepository`` (storage/tasks.py)
is these plus the task's later life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.db import Conn

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


class TaskCharges:
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
