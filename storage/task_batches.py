"""``Tasks``: the task statements a busy process runs, batched across its concurrent callers.

Callers read as repository calls (``await tasks.charge(new)``, ``await tasks.complete(job_id,
output)``); underneath, whatever arrived meanwhile shares one statement, one commit and one
fsync (flat combining, ``jobs/batch.py``). The statements are ``TaskRepository``'s own, so a
batch charges, reads and completes exactly as the same calls one by one would.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from jobs.batch import Combiner
from storage.charges import ChargeOutcome, NewTask
from storage.tasks import TaskRepository

# Charge batches in flight at once per price; an account's charges always share one shard.
_CHARGE_SHARDS = 4


class Tasks:
    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self._charges: Combiner[tuple[int, int, bool], NewTask, ChargeOutcome] = Combiner(self._charge_batch)
        self._reads: Combiner[str | None, str, asyncpg.Record | None] = Combiner(self._read_batch)
        self._completions: Combiner[str, tuple[str, Any], asyncpg.Record | None] = Combiner(self._complete_batch)

    async def charge(self, new: NewTask, *, answer_after_worker: bool = False) -> ChargeOutcome:
        """``TaskRepository.charge_and_create``: debit, insert the task and its ledger row, or do
        nothing. Raises asyncpg.UniqueViolationError if its Idempotency-Key was taken first.

        ``answer_after_worker``: the caller answers only with what the worker finished (a
        synchronous request), so the charge commits without waiting for its own fsync. The
        worker's completion (or refund) is a synchronous commit, and Postgres flushes its WAL in
        order: when that commit returns, this charge is on disk too, before any answer. A caller
        that answers sooner (202, an error) has the WAL writer's bound instead (3 ×
        ``wal_writer_delay``, 0.6 s by default), in which only a Postgres crash loses the charge
        with its task and ledger row, together: never one without the others.
        """
        if new.idempotency_key is not None or new.webhook is not None:
            # One conflicting key would abort a whole batch, and the batch statement stores no
            # webhook: such tasks are charged one by one (and a replay answers from the row at
            # once, so these charges wait for their own flush).
            return await TaskRepository(self.db).charge_and_create(new)
        # Same price per batch: each account's running sum then takes exactly the requests that
        # one-by-one charging would have taken. Accounts share batches (one commit for many
        # callers), spread over a few shards so one slow statement holds up only a part.
        durable = not answer_after_worker
        return await self._charges.submit((hash(new.uid) % _CHARGE_SHARDS, new.cost_micros, durable), new)

    async def for_worker(self, job_id: str, key_name: str | None) -> asyncpg.Record | None:
        """``TaskRepository.for_worker``: the task with the ciphertext of the key it needs."""
        return await self._reads.submit(key_name, job_id)

    async def complete(self, job_id: str, output: Any) -> asyncpg.Record | None:
        """``TaskRepository.complete``: the row it finished, or None if the task had ended already
        (a re-run job finishes a task at most once)."""
        return await self._completions.submit("", (job_id, output))

    async def _charge_batch(self, key: tuple[int, int, bool], items: list[NewTask]) -> list[ChargeOutcome]:
        return await TaskRepository(self.db).charge_batch(items, durable=key[2])

    async def _read_batch(self, key_name: str | None, job_ids: list[str]) -> list[asyncpg.Record | None]:
        if len(job_ids) == 1:  # an idle worker's batch of one: the single-row plan costs half
            return [await TaskRepository(self.db).for_worker(job_ids[0], key_name)]
        rows = {r["job_id"]: r for r in await TaskRepository(self.db).for_worker_many(job_ids, key_name)}
        return [rows.get(j) for j in job_ids]

    async def _complete_batch(self, _: str, items: list[tuple[str, Any]]) -> list[asyncpg.Record | None]:
        if len(items) == 1:  # as in _read_batch: unnest's plan is the dearer one for a single row
            return [await TaskRepository(self.db).complete(*items[0])]
        rows = {r["job_id"]: r for r in await TaskRepository(self.db).complete_many(items)}
        return [rows.get(job_id) for job_id, _ in items]
