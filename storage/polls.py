"""What every poll of the poll pool reads and writes, batched across the polls in flight.

A poll worker runs up to ``poll_concurrency`` polls at once; each reads its task's state and,
when Replicate reports a new status, records it in Postgres and in the status hash. Done one
round trip per poll, those were a third of a poll's CPU. Here the polls that reach the same
step together share one statement or one pipeline (``jobs/batch.py``): an idle worker still
sends a batch of one at once, a busy one amortises the round trip over every poll waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from jobs.batch import Combiner
from storage.predictions import PredictionRepository
from storage.status import StatusStore


class PollBatches:
    """``PredictionRepository.state`` / ``polled`` and ``StatusStore.publish_progress`` for many
    polls at once. A read is as fresh as an unbatched one (its batch starts after the caller
    asked), so a poll sees a cancel, a removed key or a terminal status exactly as before."""

    def __init__(self, pool: asyncpg.Pool, status: StatusStore) -> None:
        self._repo = PredictionRepository(pool)
        self._status = status
        self._reads: Combiner[str, str, asyncpg.Record | None] = Combiner(self._read)
        self._writes: Combiner[str, tuple[str, str], None] = Combiner(self._write)

    async def state(self, job_id: str) -> asyncpg.Record | None:
        """``PredictionRepository.state(job_id, with_request=False)``."""
        return await self._reads.submit("", job_id)

    async def polled(self, job_id: str, provider_status: str) -> None:
        """Record a new provider status: the predictions row, then the status hash, whose write
        is conditional (the webhook path may have published the end since the poll read)."""
        await self._writes.submit("", (job_id, provider_status))

    async def _read(self, _: str, job_ids: list[str]) -> list[asyncpg.Record | None]:
        rows = {r["job_id"]: r for r in await self._repo.states(list(set(job_ids)))}
        return [rows.get(j) for j in job_ids]

    async def _write(self, _: str, items: list[tuple[str, str]]) -> list[None]:
        # Two polls of one prediction in one batch (a webhook's and the chain's): the last wins,
        # as it would have in two statements; an UPDATE ... FROM must not see a row twice.
        latest = list(dict(items).items())
        await self._repo.polled_many(latest)
        now = datetime.now(UTC).isoformat()
        await self._status.publish_progress_many([(job_id, st, now) for job_id, st in latest])
        return [None] * len(items)
