"""Benchmark: one poll worker tracking N in-flight Replicate predictions, and POST /generate.

    .venv/bin/python -m tests.bench.poll [--sizes 1000,10000] [--seconds 60]

Starts embedded Postgres (fsync on) and Redis, the Replicate simulator, the ingress (uvicorn)
and one media and one poll worker (``syncnode worker``), each its own process. Per size and
mode (webhooks / polling only) it submits N ``POST /generate`` at concurrency 50 (throughput,
p99), waits until all N predictions run, measures the poll worker's CPU and RSS and Redis
commands/s over a steady window, then, once the simulator finishes them, the delay from the
provider's finish to the task being completed (``tasks.updated_at``: the status hash that
/prediction-status reads is written right after) and a sampled /prediction-status check.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis.asyncio as aioredis

from storage.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from storage.migrate import migrate

PY = sys.executable


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(os.environ.get("BENCH_LOG", os.devnull), "ab")
    return subprocess.Popen(args, env=env, stdout=log, stderr=log)


async def _wait_http(url: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(300):
            try:
                await c.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def _submit(base: str, headers: list[dict[str, str]], n: int, seconds: float) -> dict[str, float]:
    lat: list[float] = []
    sem = asyncio.Semaphore(50)
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                # One account per concurrent client: charges of one account serialize on its row.
                r = await c.post("/generate", headers=headers[i % len(headers)], json={"model": "bench/model",
                                                    "input": {"i": i, "sim": {"seconds": seconds}}})
                lat.append(time.perf_counter() - t)
                assert r.status_code == 202, r.text

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"rps": n / wall, "p50_ms": _pct(lat, 0.5) * 1000, "p99_ms": _pct(lat, 0.99) * 1000}


async def _count(db: asyncpg.Pool, uids: list[str], status: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM tasks WHERE uid = ANY($1::text[]) AND status = $2",
                                 uids, status))


async def scenario(ctx: dict[str, Any], n: int, webhooks: bool, seconds: float) -> dict[str, Any]:
    env = dict(ctx["env"], SYNCNODE_REPLICATE_WEBHOOKS="on" if webhooks else "off")
    db: asyncpg.Pool = ctx["db"]
    rd: aioredis.Redis = ctx["redis"]
    sim = ctx["sim"]
    async with httpx.AsyncClient(base_url=sim, timeout=120) as s:
        await s.post("/_sim/reset", json={})
        await s.post("/_sim/config", json={"deliver": webhooks})
    media = _spawn([PY, "-m", "ingress.cli", "worker", "media"], env)
    poll = _spawn([PY, "-m", "ingress.cli", "worker", "poll"], env)
    pp = psutil.Process(poll.pid)
    try:
        hs: list[dict[str, str]] = []
        uids: list[str] = []
        async with httpx.AsyncClient(base_url=ctx["api"], timeout=30) as c:
            for i in range(50):
                acct = (await c.post("/accounts", headers=ctx["admin"])).json()
                await c.post("/admin/credit", headers=ctx["admin"],
                             json={"uid": acct["uid"], "amount": n * 0.02 / 50 + 1, "reason": "bench"})
                hs.append({"Authorization": f"Bearer {acct['api_key']}"})
                uids.append(acct["uid"])
                await c.post("/api-keys", headers=hs[-1], json={"replicate_key": f"r8_b{n}_{int(webhooks)}_{i}"})
        await asyncio.sleep(1.0)
        gen = await _submit(ctx["api"], hs, n, seconds)
        t_running = time.monotonic()
        while await _count(db, uids, "running") + await _count(db, uids, "completed") < n:
            await asyncio.sleep(0.5)
        created_in = time.monotonic() - t_running
        # Steady state: everything in flight, nothing finished yet.
        window = 15.0
        c0, r0 = pp.cpu_times(), int((await rd.info("stats"))["total_commands_processed"])
        await asyncio.sleep(window)
        c1, r1 = pp.cpu_times(), int((await rd.info("stats"))["total_commands_processed"])
        rss = pp.memory_info().rss / 2**20
        cpu = (c1.user + c1.system - c0.user - c0.system) / window * 100
        while await _count(db, uids, "completed") < n:
            if await _count(db, uids, "failed"):
                raise RuntimeError("some predictions failed")
            await asyncio.sleep(0.5)
        rows = await db.fetch("SELECT job_id, provider_id, updated_at, uid FROM tasks WHERE uid = ANY($1::text[])",
                              uids)
        async with httpx.AsyncClient(base_url=sim, timeout=300) as s:
            preds = (await s.get("/_sim/predictions")).json()
            stats = (await s.get("/_sim/stats")).json()
        delays = [r["updated_at"].timestamp() - preds[r["provider_id"]]["_finished_at"] for r in rows]
        async with httpx.AsyncClient(base_url=ctx["api"]) as c:
            sample = [(await c.get("/prediction-status", params={"job_id": r["job_id"]},
                                   headers=hs[uids.index(r["uid"])])).json() for r in rows[:20]]
        assert all(b["replicate_status"] == "completed" for b in sample)
        return {"n": n, "mode": "webhooks" if webhooks else "polling only", "generate": gen,
                "created_in_s": created_in, "cpu_pct": cpu, "rss_mib": rss,
                "redis_cmds_per_s": (r1 - r0) / window, "delay_p50_s": _pct(delays, 0.5),
                "delay_p99_s": _pct(delays, 0.99), "delay_max_s": max(delays),
                "delay_mean_s": statistics.fmean(delays), "sim": stats}
    finally:
        for p in (media, poll):
            p.terminate()
            p.wait(10)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long each prediction runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="syncnode-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    pg.start()
    rdb = EmbeddedRedis(tmp / "redis", persist=False)
    rdb.start()
    await migrate(pg.dsn)
    sim_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(os.environ, DATABASE_URL=pg.dsn, REDIS_URL=rdb.url, SYNCNODE_DATA_DIR=str(tmp / "data"),
               SYNCNODE_MASTER_KEY="bench-master-key", SYNCNODE_ADMIN_TOKEN="bench-admin",
               SYNCNODE_PUBLIC_URL=api, SYNCNODE_REPLICATE_BASE_URL=f"http://127.0.0.1:{sim_port}/v1",
               SYNCNODE_LOG_LEVEL="WARNING")
    procs = [
        _spawn([PY, "-m", "uvicorn", "tests.fakes.replicate:app", "--port", str(sim_port), "--log-level",
                "warning", "--no-access-log"], env),
        _spawn([PY, "-m", "uvicorn", "ingress.app:create_app", "--factory", "--port", str(api_port),
                "--log-level", "warning", "--no-access-log"], env),
    ]
    try:
        await _wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats")
        await _wait_http(f"{api}/healthz")
        ctx = {"env": env, "api": api, "sim": f"http://127.0.0.1:{sim_port}", "admin":
               {"Authorization": "Bearer bench-admin"}, "db": await asyncpg.create_pool(pg.dsn),
               "redis": aioredis.from_url(rdb.url)}
        print(f"# {datetime.now().isoformat(timespec='minutes')} {os.cpu_count()} cores, Python "
              f"{sys.version.split()[0]}", flush=True)
        for n in (int(x) for x in args.sizes.split(",")):
            for webhooks in (True, False):
                r = await scenario(ctx, n, webhooks, args.seconds)
                print(r, flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        rdb.stop()
        pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
