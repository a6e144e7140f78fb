"""Benchmark of scale-out: chat jobs per second with 1, 2 and 4 `syncnode worker chat` processes
on one Redis (issue 11).

    .venv/bin/python -m tests.bench.scaleout [--jobs 2000] [--workers 1,2,4]

For each worker count: the workers start and are paused (SIGSTOP), ``--jobs`` fire-and-poll
calls are accepted by the ingress, the workers are resumed and the clock runs until Postgres
holds every task completed. So the figure is the workers' drain rate, not the ingress's.
Two providers: ``instant`` (the fake answers at once: the gateway's own CPU is the limit) and
``slow-0.5`` (each answer takes 0.5 s and each worker runs at most 50 at once, so one worker
tops out at 100 jobs/s: the case scale-out is for). Prints the load average before each run:
on a shared machine, read the numbers with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time

import asyncpg
import httpx

from tests.bench.stack import Stack

PER_WORKER = 50


async def _submit(base: str, key: str, model: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    sem = asyncio.Semaphore(50)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=50)) as c:
        async def one(i: int) -> None:
            async with sem:
                r = await c.post("/chat-completion", headers=headers, json={"model": model, "prompt": f"j{i}"})
                assert r.status_code == 202, r.text

        await asyncio.gather(*(one(i) for i in range(n)))


async def _drained(dsn: str, since_id: int, n: int, timeout: float = 600) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.monotonic()
        while await conn.fetchval("SELECT count(*) FROM tasks WHERE id > $1 AND status = 'completed'", since_id) < n:
            assert time.monotonic() - t0 < timeout, "the workers did not drain the queue"
            await asyncio.sleep(0.05)
        return time.monotonic() - t0
    finally:
        await conn.close()


def _wait_ready(stack: Stack, names: list[str]) -> None:
    deadline = time.monotonic() + 60
    for name in names:
        while "worker for pool chat" not in (stack.tmp / f"{name}.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.05)


def run_one(stack: Stack, key: str, model: str, workers: int, jobs: int) -> dict[str, object]:
    names = [f"chat{i}" for i in range(workers)]
    quiet = stack.env
    # INFO for the worker's readiness line (the per-request log lines cost well under 1 % here).
    stack.env = dict(quiet, SYNCNODE_LOG_LEVEL="INFO")
    try:
        for name in names:
            stack.spawn(name, [sys.executable, "-m", "ingress.cli", "worker", "chat"])
    finally:
        stack.env = quiet
    try:
        _wait_ready(stack, names)
        for name in names:
            stack.procs[name].send_signal(signal.SIGSTOP)
        dsn = stack.env["DATABASE_URL"]
        since = asyncio.run(_max_id(dsn))
        asyncio.run(_submit(f"http://127.0.0.1:{stack.port}", key, model, jobs))
        load = os.getloadavg()[0]
        for name in names:
            stack.procs[name].send_signal(signal.SIGCONT)
        seconds = asyncio.run(_drained(dsn, since, jobs))
    finally:
        for name in names:
            p = stack.procs.pop(name)
            p.send_signal(signal.SIGCONT)
            p.terminate()
            p.wait(30)
    row = {"provider": model, "workers": workers, "jobs": jobs, "seconds": round(seconds, 2),
           "jobs_per_s": round(jobs / seconds, 1), "load_1m_before": round(load, 2)}
    print(json.dumps(row), flush=True)
    return row


async def _max_id(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM tasks"))
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.node()} cores={os.cpu_count()} "
          f"python={platform.python_version()} load before={os.getloadavg()}", flush=True)
    stack = Stack()
    stack.start((), {"SYNCNODE_CHAT_CONCURRENCY": str(PER_WORKER)})
    try:
        key = stack.account({"openrouter_key": "sk-or-v1-bench"})
        run_one(stack, key, "m", 1, min(200, args.jobs))  # warm up: connections, caches
        rows = [run_one(stack, key, model, w, args.jobs) for model in ("m", "slow-0.5") for w in counts]
        print("\n| provider | workers | jobs | seconds | jobs/s | load (1 min) before |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {'instant' if r['provider'] == 'm' else r['provider']} | {r['workers']} | {r['jobs']} | "
                  f"{r['seconds']} | {r['jobs_per_s']} | {r['load_1m_before']} |")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
