"""Worker metrics, aggregated across machines through Redis, and what a scrape reads of them.

Workers run on many machines; an operator scrapes one /metrics. Each worker process counts
in memory and adds its counts to Redis hashes every few seconds (one pipeline); the ingress
reads the hashes when scraped. Counters only ever grow, as Prometheus expects.

A scrape is one pipeline: the counter hashes, one script that measures every pool's queue
(depth, deferred, age of the oldest waiting job, dead letters) and the cached ledger totals.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs import keys

log = logging.getLogger("syncnode.metrics")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
JOBS = keys.metrics("jobs")              # field "pool|function|outcome" → count
# Run time per pool and function: fields "pool|function|le" → count, "pool|function|sum", "…|count".
# (Before, the fields were "pool|le": a scrape skips fields of the other shape.)
DURATION = keys.metrics("job_duration")
WAIT = keys.metrics("job_wait")          # time queued since due: "pool|le", "pool|sum", "pool|count"
PROVIDER_ERRORS = keys.metrics("provider_errors")  # field "provider|status" → count
LEDGER = keys.metrics("ledger")          # STRING with TTL: {kind: [rows, micros]} from Postgres
_HASHES = (JOBS, DURATION, WAIT, PROVIDER_ERRORS)


class WorkerMetrics:
    def __init__(self) -> None:
        self._ints: dict[str, Counter[str]] = {k: Counter() for k in _HASHES}
        self._sums: dict[str, dict[str, float]] = {DURATION: {}, WAIT: {}}

    def _observe(self, key: str, labels: str, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS, seconds)
        le = str(BUCKETS[i]) if i < len(BUCKETS) else "+Inf"
        self._ints[key][f"{labels}|{le}"] += 1
        self._ints[key][f"{labels}|count"] += 1
        sums = self._sums[key]
        sums[f"{labels}|sum"] = sums.get(f"{labels}|sum", 0.0) + seconds

    def job(self, pool: str, function: str, outcome: str, seconds: float) -> None:
        self._ints[JOBS][f"{pool}|{function}|{outcome}"] += 1
        self._observe(DURATION, f"{pool}|{function}", seconds)

    def waited(self, pool: str, seconds: float) -> None:
        self._observe(WAIT, pool, seconds)

    def provider_error(self, provider: str, status: str) -> None:
        """``status``: the HTTP status, or the transport error's name when there was no answer."""
        self._ints[PROVIDER_ERRORS][f"{provider}|{status}"] += 1

    async def flush(self, redis: Redis) -> None:
        ints = {k: c for k, c in self._ints.items() if c}
        sums = {k: s for k, s in self._sums.items() if s}
        if not ints and not sums:
            return
        self._ints = {k: Counter() for k in _HASHES}
        self._sums = {DURATION: {}, WAIT: {}}
        async with redis.pipeline(transaction=False) as pipe:
            for key, counts in ints.items():
                for field, n in counts.items():
                    pipe.hincrby(key, field, n)
            for key, fields in sums.items():
                for field, s in fields.items():
                    pipe.hincrbyfloat(key, field, s)
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


# Per pool (KEYS: queue, dead letters): jobs in the queue ZSET (arq keeps running ones there too),
# those deferred to later, the ms the longest-waiting due job that no worker holds has waited,
# and the dead letters. A job waits from when it became due: its score, or its enqueue time for
# an urgent job (scored before it, jobs/queue.py). Scanning in score order stops once no later
# job can have waited longer; at most ARGV[1] due jobs are looked at (running ones are skipped).
_POOLS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS, 2 do
  local depth = redis.call('ZCARD', KEYS[i])
  local deferred = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  local oldest = 0
  if depth > deferred then
    local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
    for j = 1, #due, 2 do
      local score = tonumber(due[j + 1])
      if now - score <= oldest then break end
      if redis.call('EXISTS', ARGV[2] .. due[j]) == 0 then
        local since = score
        local payload = redis.call('GET', ARGV[3] .. due[j])
        local et = payload and tonumber(string.match(payload, '"et":(%d+)}$'))
        if et and et > since then since = et end
        if now - since > oldest then oldest = now - since end
      end
    end
  end
  local dead = 0
  local kind = redis.call('TYPE', KEYS[i + 1])['ok']
  if kind == 'zset' then dead = redis.call('ZCARD', KEYS[i + 1])
  elseif kind == 'list' then dead = redis.call('LLEN', KEYS[i + 1])
  elseif kind == 'hash' then dead = redis.call('HLEN', KEYS[i + 1])
  elseif kind == 'stream' then dead = redis.call('XLEN', KEYS[i + 1]) end
  out[#out + 1] = depth
  out[#out + 1] = deferred
  out[#out + 1] = oldest
  out[#out + 1] = dead
end
return out
"""
_SCAN_DUE = 1000


@dataclass(frozen=True, slots=True)
class PoolStats:
    depth: int
    deferred: int
    oldest_wait_s: float
    dead: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    counters: dict[str, dict[str, float]]  # hash key → field → value
    pools: dict[str, PoolStats]
    ledger: dict[str, tuple[int, int]] | None  # kind → (rows, micros); None when not cached


async def snapshot(redis: Redis) -> Snapshot:
    ks = [k for pool in keys.POOLS for k in (keys.queue(pool), keys.dead(pool))]
    async with redis.pipeline(transaction=False) as pipe:
        for k in _HASHES:
            pipe.hgetall(k)
        pipe.eval(_POOLS_LUA, len(ks), *ks, _SCAN_DUE, keys.in_progress_key_prefix, keys.job_key_prefix)
        pipe.get(LEDGER)
        *hashes, pools, ledger = await pipe.execute()
    counters = {k: {f.decode(): float(v) for f, v in h.items()} for k, h in zip(_HASHES, hashes, strict=True)}
    stats = {pool: PoolStats(int(pools[i]), int(pools[i + 1]), int(pools[i + 2]) / 1000, int(pools[i + 3]))
             for pool, i in zip(keys.POOLS, range(0, len(pools), 4), strict=True)}
    return Snapshot(counters, stats, _ledger(ledger))


def _ledger(raw: bytes | None) -> dict[str, tuple[int, int]] | None:
    if raw is None:
        return None
    data: dict[str, Any] = orjson.loads(raw)
    return {k: (int(v[0]), int(v[1])) for k, v in data.items()}


async def cache_ledger(redis: Redis, totals: dict[str, tuple[int, int]], ttl_s: float) -> None:
    """Share the ledger totals with every ingress for ``ttl_s``: one query per period, not per scrape."""
    await redis.set(LEDGER, orjson.dumps({k: list(v) for k, v in totals.items()}), px=max(1, int(ttl_s * 1000)))
