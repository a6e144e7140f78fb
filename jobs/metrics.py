"""Worker metrics, aggregated across machines through Redis.

Workers run on many machines; an operator scrapes one /metrics. Each worker process counts
in memory and adds its counts to Redis hashes every few seconds (one pipeline); the ingress
reads the hashes when scraped. Counters only ever grow, as Prometheus expects.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter

from redis.asyncio import Redis

from jobs import keys

log = logging.getLogger("syncnode.metrics")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
JOBS = keys.metrics("jobs")              # field "pool|function|outcome" → count
DURATION = keys.metrics("job_duration")  # field "pool|le" → count, "pool|sum", "pool|count"
PROVIDER_ERRORS = keys.metrics("provider_errors")  # field "provider|kind" → count


class WorkerMetrics:
    def __init__(self) -> None:
        self._ints: dict[str, Counter[str]] = {JOBS: Counter(), DURATION: Counter(), PROVIDER_ERRORS: Counter()}
        self._sums: dict[str, float] = {}

    def job(self, pool: str, function: str, outcome: str, seconds: float) -> None:
        self._ints[JOBS][f"{pool}|{function}|{outcome}"] += 1
        i = bisect.bisect_left(BUCKETS, seconds)
        le = str(BUCKETS[i]) if i < len(BUCKETS) else "+Inf"
        self._ints[DURATION][f"{pool}|{le}"] += 1
        self._ints[DURATION][f"{pool}|count"] += 1
        self._sums[f"{pool}|sum"] = self._sums.get(f"{pool}|sum", 0.0) + seconds

    def provider_error(self, provider: str, kind: str) -> None:
        self._ints[PROVIDER_ERRORS][f"{provider}|{kind}"] += 1

    async def flush(self, redis: Redis) -> None:
        ints = {k: c for k, c in self._ints.items() if c}
        sums = self._sums
        if not ints and not sums:
            return
        self._ints = {JOBS: Counter(), DURATION: Counter(), PROVIDER_ERRORS: Counter()}
        self._sums = {}
        async with redis.pipeline(transaction=False) as pipe:
            for key, counts in ints.items():
                for field, n in counts.items():
                    pipe.hincrby(key, field, n)
            for field, s in sums.items():
                pipe.hincrbyfloat(DURATION, field, s)
            await pipe.execute()

    async def run_flusher(self, redis: Redis, every: float = 5.0) -> None:
        try:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.flush(redis)
                except Exception:
                    log.warning("metrics flush failed", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush(redis))


async def snapshot(redis: Redis) -> dict[str, dict[str, float]]:
    async with redis.pipeline(transaction=False) as pipe:
        for k in (JOBS, DURATION, PROVIDER_ERRORS):
            pipe.hgetall(k)
        res = await pipe.execute()
    return {k: {f.decode(): float(v) for f, v in r.items()} for k, r in zip((JOBS, DURATION, PROVIDER_ERRORS), res,
                                                                          strict=True)}
