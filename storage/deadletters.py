"""Dead letters: a record of every task job arq gave up on, per pool (``syncnode:dead:<pool>``).

A ZSET of JSON records scored by the time (ms) the job was buried, so each record can expire on
its own (``dead_letter_ttl_seconds``) and the set stays capped (``dead_letter_max``, oldest out
first). The sweeper writes them (``workers/sweeper.py``) when it fails and refunds such a task,
so a record always means "failed and refunded": a dead job is not re-runnable. The queue CLI
reads them (``syncnode queue dead <pool>``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from jobs import keys
from jobs.serialize import dumps, loads


def arq_failure(raw: bytes | None) -> tuple[str | None, int | None, str | None]:
    """(function, tries, error) from arq's stored result of a job (``arq:result:<id>``)."""
    if not raw:
        return None, None, None
    try:
        r = loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(r, dict):
        return None, None, None
    tries = r.get("t") if isinstance(r.get("t"), int) else None
    error = str(r["r"]) if not r.get("s") and r.get("r") else None
    if tries is not None and error is not None and "retries exceeded" in error:
        tries -= 1  # arq counted the try it refused to start
    return r.get("f"), tries, error


def record(job_id: str, pool: str, *, function: str | None, tries: int | None, error: str,
           task_id: int | None = None, uid: str | None = None) -> dict[str, Any]:
    return {"job_id": job_id, "pool": pool, "function": function, "tries": tries, "error": error,
            "task_id": task_id, "uid": uid, "refunded": True,
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


class DeadLetters:
    def __init__(self, redis: Redis, max_records: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.max = max_records
        self.ttl = ttl_seconds

    def _oldest_kept_ms(self) -> int:
        return int((time.time() - self.ttl) * 1000)

    async def add(self, pool: str, rec: dict[str, Any]) -> None:
        key = keys.dead(pool)
        async with self.redis.pipeline(transaction=True) as tr:
            tr.zadd(key, {dumps(rec): int(time.time() * 1000)})
            tr.zremrangebyscore(key, "-inf", f"({self._oldest_kept_ms()}")
            tr.zremrangebyrank(key, 0, -(self.max + 1))
            tr.expire(key, self.ttl)
            await tr.execute()

    async def list(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; records past their expiry are not shown (nor counted)."""
        raw = await self.redis.zrevrangebyscore(keys.dead(pool), "+inf", self._oldest_kept_ms(),
                                                start=0, num=max(1, limit))
        return [dict(loads(r)) for r in raw]

    async def count(self, pool: str) -> int:
        return int(await self.redis.zcount(keys.dead(pool), self._oldest_kept_ms(), "+inf"))

    async def find(self, job_id: str, pools: tuple[str, ...] = keys.POOLS) -> dict[str, Any] | None:
        for pool in pools:
            for rec in await self.list(pool, self.max):
                if rec.get("job_id") == job_id:
                    return rec
        return None

    async def purge(self, pool: str) -> int:
        """Delete every record of ``pool``; returns how many there were."""
        async with self.redis.pipeline(transaction=True) as tr:
            tr.zcard(keys.dead(pool))
            tr.delete(keys.dead(pool))
            n, _ = await tr.execute()
        return int(n)
