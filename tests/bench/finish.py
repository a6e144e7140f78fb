"""Micro-benchmark of finishing arq jobs: arq's own ``Worker.finish_job`` (a MULTI/EXEC of five
commands per job), the same commands for a batch in one MULTI/EXEC (how ``_finish_batch`` did it
before) and ``SyncNodeWorker._finish_batch`` (one script per batch of jobs, the batch a
``Combiner`` gathers), on an embedded Redis of its own.

    .venv/bin/python -m tests.bench.finish [--jobs 8000] [--batch 4]

Prints CPU-µs per finished job of this process (the client side) and of redis-server, for each
way, in alternation (three rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import abort_jobs_ss
from arq.worker import Worker, func

from jobs import keys
from storage.embedded import EmbeddedRedis
from storage.redis_wire import packed_by_hiredis
from workers.runtime.worker import SyncNodeWorker

RESULT = b"r" * 120  # a chat job's serialized outcome is about this size


async def noop(ctx: dict[str, Any]) -> None:
    return None


def _server_cpu(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def _arq(w: Worker, ids: list[str]) -> None:
    for job_id in ids:
        await w.finish_job(job_id, True, RESULT, 60, False, None, None)


async def _multi(w: SyncNodeWorker, ids: list[str]) -> None:
    """How ``_finish_batch`` did it before the script (b51527e^): arq's commands for the whole
    batch in one MULTI/EXEC, the lock released by an EVAL each."""
    release = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
    async with w.pool.pipeline(transaction=True) as tr:
        for job_id in ids:
            tr.eval(release, 1, keys.in_progress_key_prefix + job_id, w.token)
            tr.set(keys.result_key_prefix + job_id, RESULT, px=60_000)
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(w.queue_name, job_id)
            tr.delete(keys.retry_key_prefix + job_id, keys.job_key_prefix + job_id)
        await tr.execute()


async def _ours(w: SyncNodeWorker, ids: list[str]) -> None:
    await w._finish_batch("", [(job_id, True, RESULT, 60, False, None, None) for job_id in ids])


async def run(url: str, pid: int, jobs: int, batch: int) -> None:
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(url))
    packed_by_hiredis(pool.connection_pool)  # as the workers pack their commands
    queue = keys.queue("bench-finish")
    arq_w = Worker(functions=[func(noop, name="noop")], redis_pool=pool, queue_name=queue, handle_signals=False)
    ours = SyncNodeWorker(functions=[func(noop, name="noop")], redis_pool=pool, queue_name=queue,
                          handle_signals=False, pool_name="bench-finish")
    try:
        for rnd in range(3):
            ways: list[tuple[str, Callable[[list[str]], Awaitable[None]]]] = [
                ("arq finish_job, one per job", lambda ids: _arq(arq_w, ids)),
                (f"one MULTI/EXEC per batch of {batch}", lambda ids: _multi(ours, ids)),
                (f"one script per batch of {batch}", lambda ids: _ours(ours, ids))]
            for n, (name, way) in enumerate(ways):
                s0, c0 = _server_cpu(pid), time.process_time()
                for start in range(0, jobs, batch):
                    await way([f"{rnd}-{n}-{i}" for i in range(start, start + batch)])
                print(json.dumps({"round": rnd, "way": name, "jobs": jobs,
                                  "client_cpu_us_per_job": round((time.process_time() - c0) * 1e6 / jobs, 1),
                                  "redis_cpu_us_per_job": round((_server_cpu(pid) - s0) * 1e6 / jobs, 1)}),
                      flush=True)
            await pool.flushdb()
    finally:
        await pool.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=4, help="jobs per batch (about 4 at c=50, docs/benchmarks.md)")
    a = ap.parse_args()
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="syncnode-bench-")) / "redis", persist=False)
    url = redis.start()
    try:
        assert redis.proc is not None
        asyncio.run(run(url, redis.proc.pid, a.jobs, a.batch))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
