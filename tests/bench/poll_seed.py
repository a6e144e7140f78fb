"""The processes and the seeding behind ``tests/bench/poll.py``.

Seeding puts N predictions in flight without N ``POST /generate`` + N ``media.create`` jobs:
on two cores those take minutes for 10,000 and are not what the poll benchmark measures
(``POST /generate`` is measured on its own). The rows are the ones the ingress and the media
worker write — the charge through ``TaskRepository.charge_many``, the predictions at the
simulator in one ``/_sim/seed`` call per batch, ``predictions``/``tasks`` as ``begin_create`` +
``set_running`` leave them, the status hash as the enqueue seeds it — and each poll chain is
started with the worker's own ``schedule_poll``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from jobs import keys
from jobs.metrics import WorkerMetrics
from jobs.names import GENERATE
from jobs.queue import JobQueue
from jobs.settings import get_settings
from storage.charges import NewTask
from storage.db import create_pool
from storage.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from storage.secrets import SecretBox
from storage.status import StatusStore
from storage.tasks import TaskRepository
from tests.bench.stack import wait_http
from tests.fakes.replicate import secret_for
from workers.context import WorkerContext
from workers.poll import schedule_poll

PY = sys.executable
# The link number a seeded chain starts at: backoff(5) = 1.6^5 s is past the 8 s cap, so every
# chain polls at the cap, as predictions that have run for a while do.
STEADY_LINK = 5
# With a webhook, chains stretch to the backstop cap (poll_webhook_backstop_seconds, 60 s):
# 1.6^9 s is past it.
STEADY_LINK_HOOKED = 9


@dataclass
class Account:
    uid: str
    api_key: str
    replicate_key: str


@dataclass
class Bench:
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="syncnode-bench-poll-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    accounts: list[Account] = field(default_factory=list)

    async def start(self) -> None:
        self.pg = EmbeddedPostgres(self.tmp / "pg", fsync=True)
        self.rdb = EmbeddedRedis(self.tmp / "redis", persist=False)
        sim_port, api_port = free_port(), free_port()
        self.api, self.sim = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sim_port}"
        self.env = dict(os.environ, DATABASE_URL=self.pg.start(), REDIS_URL=self.rdb.start(),
                        SYNCNODE_DATA_DIR=str(self.tmp / "data"), SYNCNODE_MASTER_KEY="bench-master-key",
                        SYNCNODE_ADMIN_TOKEN="bench-admin", SYNCNODE_PUBLIC_URL=self.api,
                        SYNCNODE_REPLICATE_BASE_URL=f"{self.sim}/v1", SYNCNODE_LOG_LEVEL="WARNING",
                        SYNCNODE_LIMITS_ENABLED="false")
        # This process seeds with the gateway's own code, so it reads the same settings.
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("SYNCNODE_", "DATABASE", "REDIS"))})
        get_settings.cache_clear()
        from storage.migrate import migrate

        await migrate(self.env["DATABASE_URL"])
        uv = [PY, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
        self.spawn("sim", [*uv, "tests.fakes.replicate:app", "--port", str(sim_port)])
        self.spawn("web", [*uv, "--factory", "ingress.app:create_app", "--port", str(api_port)])
        await wait_http(f"{self.sim}/_sim/stats")
        await wait_http(f"{self.api}/healthz")
        self.db = await create_pool(self.env["DATABASE_URL"], min_size=2, max_size=10)  # with the jsonb codecs
        self.redis = aioredis.from_url(self.env["REDIS_URL"])
        s = get_settings()
        self.w = WorkerContext(pool_name="bench", settings=s, db=self.db, redis=self.redis,
                               queue=JobQueue(self.redis, s.status_ttl_seconds),
                               status=StatusStore(self.redis, s.status_ttl_seconds),
                               box=SecretBox(s.master_key_value()), metrics=WorkerMetrics())

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        return self.procs[name]

    def stop_proc(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    async def make_accounts(self, n: int, dollars: float) -> None:
        admin = {"Authorization": "Bearer bench-admin"}
        async with httpx.AsyncClient(base_url=self.api, timeout=30) as c:
            for i in range(n):
                acct = (await c.post("/accounts", headers=admin)).json()
                await c.post("/admin/credit", headers=admin, json={"uid": acct["uid"], "amount": dollars})
                rkey = f"r8_bench_{i}_{uuid.uuid4().hex[:8]}"
                r = await c.post("/api-keys", headers={"Authorization": f"Bearer {acct['api_key']}"},
                                 json={"replicate_key": rkey})
                r.raise_for_status()
                self.accounts.append(Account(acct["uid"], acct["api_key"], rkey))

    async def reset(self) -> None:
        """Between runs: no chain, task or prediction of the previous run survives."""
        await self.redis.flushdb()
        await self.db.execute("UPDATE tasks SET status = 'canceled', updated_at = now() "
                              "WHERE status IN ('queued', 'running')")
        async with httpx.AsyncClient(base_url=self.sim, timeout=60) as c:
            (await c.post("/_sim/reset", json={})).raise_for_status()

    async def stop(self) -> None:
        for name in list(self.procs):
            self.stop_proc(name)
        await self.db.close()
        await self.redis.aclose()
        self.rdb.stop()
        self.pg.stop()
        if not os.environ.get("BENCH_KEEP"):  # BENCH_KEEP=1 keeps the processes' logs
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Seeded:
    job_id: str
    uid: str
    api_key: str
    provider_id: str


async def seed(b: Bench, n: int, webhooks: bool, batch: int = 500) -> list[Seeded]:
    """N predictions in flight (running until told to finish), each with a poll chain at the cap."""
    out: list[Seeded] = []
    cost = GENERATE.price_micros(b.w.settings)
    async with httpx.AsyncClient(base_url=b.sim, timeout=120) as sim:
        for start in range(0, n, batch):
            acct = b.accounts[(start // batch) % len(b.accounts)]
            tasks = [NewTask(job_id=str(uuid.uuid4()), uid=acct.uid, kind=GENERATE.name, pool=GENERATE.pool,
                             model="bench/model", prompt=None, request={"model": "bench/model", "input": {"i": i}},
                             cost_micros=cost, key_name=GENERATE.key_name)
                     for i in range(start, min(n, start + batch))]
            charged = await TaskRepository(b.db).charge_many(acct.uid, tasks)
            if any(c.task_id is None for c in charged):
                raise RuntimeError("seeding: a charge failed (balance?)")
            hooks = [f"{b.api}/webhooks/replicate?job_id={t.job_id}" if webhooks else None for t in tasks]
            r = await sim.post("/_sim/seed", json={"key": acct.replicate_key, "items": [
                {"webhook": h, "input": t.request["input"]} for t, h in zip(tasks, hooks, strict=True)]})
            r.raise_for_status()
            pids: list[str] = r.json()
            secret = b.w.box.encrypt(secret_for(acct.replicate_key)) if webhooks else None
            jids = [t.job_id for t in tasks]
            async with b.db.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO predictions (job_id, create_started_at, webhook_secret) "
                                   "SELECT j, now(), $2 FROM unnest($1::text[]) AS j", jids, secret)
                await conn.execute("UPDATE tasks t SET status = 'running', provider_id = v.pid, updated_at = now() "
                                   "FROM unnest($1::text[], $2::text[]) AS v(job_id, pid) WHERE t.job_id = v.job_id",
                                   jids, pids)
            async with b.redis.pipeline(transaction=False) as pipe:
                for t, c in zip(tasks, charged, strict=True):
                    assert c.task_id is not None
                    pipe.hset(keys.task_status(t.job_id),
                              mapping=StatusStore.initial(acct.uid, c.task_id, GENERATE.name))
                    pipe.expire(keys.task_status(t.job_id), b.w.settings.status_ttl_seconds)
                await pipe.execute()
            # Spread over one cap period, as chains of predictions created over time would be.
            st = b.w.settings
            cap = max(st.poll_cap_seconds, st.poll_webhook_backstop_seconds) if webhooks else st.poll_cap_seconds
            link = STEADY_LINK_HOOKED if webhooks else STEADY_LINK
            await asyncio.gather(*(schedule_poll(b.w, j, link, random.uniform(0, cap)) for j in jids))
            out += [Seeded(j, acct.uid, acct.api_key, p) for j, p in zip(jids, pids, strict=True)]
    return out


async def finish_at(b: Bench, provider_ids: list[str], rate: float, lead_s: float = 1.0) -> float:
    """Tell the simulator to finish these predictions ``rate`` per second from ``lead_s`` on."""
    t0 = time.time() + lead_s
    async with httpx.AsyncClient(base_url=b.sim, timeout=60) as sim:
        r = await sim.post("/_sim/finish", json={"items": [[p, t0 + i / rate] for i, p in enumerate(provider_ids)]})
        r.raise_for_status()
    return t0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def summary(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50": round(pct(xs, 0.5), 3), "p90": round(pct(xs, 0.9), 3),
            "p99": round(pct(xs, 0.99), 3), "max": round(max(xs), 3) if xs else None}
