"""Benchmark: one poll worker tracking N in-flight Replicate predictions, and POST /generate.

    .venv/bin/python -m tests.bench.poll [--sizes 1000,10000] [--modes webhooks,polling]
        [--finish 1000] [--rate 20] [--steady 20] [--generate-seconds 20] [--max-minutes 30]

Embedded Postgres (fsync on) and Redis, the Replicate simulator and the ingress (uvicorn),
each its own process, plus one ``syncnode worker poll`` per run (and ``media`` for the
/generate run). Per size and mode:

1. seed N running predictions (``poll_seed.seed``: the same rows and the worker's own
   ``schedule_poll``, no HTTP creates) whose chains poll at the 8 s cap, spread over 8 s;
2. after a warm-up, a steady window with all N in flight: the poll worker's CPU and RSS, Redis
   commands/s (``INFO stats``), simulator GETs/s (= polls/s) and the overdue backlog;
3. ``--finish`` of them finish at the simulator ``--rate`` per second while the others stay in
   flight; the delay from each finish to its task being completed (``tasks.updated_at``; the
   status hash /prediction-status reads is written right after), every one then checked through
   ``GET /prediction-status``. With webhooks the delay is split with the simulator's delivery
   time and the webhook job's arq result (enqueued / started / finished).

``POST /generate`` is run with wrk at concurrency 50 over 50 accounts with the media and poll
workers running. Every run is bounded by ``--max-minutes``; ``BENCH_JSON=path`` appends results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from arq.jobs import deserialize_result

from jobs import keys
from jobs.serialize import loads
from tests.bench.poll_seed import PY, Bench, finish_at, seed, summary


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def _redis_cmds(b: Bench) -> int:
    return int((await b.redis.info("stats"))["total_commands_processed"])


async def _sim_stats(b: Bench) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=b.sim, timeout=30) as c:
        return dict((await c.get("/_sim/stats")).json())


def _others(b: Bench) -> dict[str, list[psutil.Process]]:
    """The other processes on the two cores, for what dominates the machine."""
    roots = {"sim": b.procs["sim"].pid, "ingress": b.procs["web"].pid}
    for name, emb in (("redis", b.rdb), ("postgres", b.pg)):
        if emb.proc is not None:
            roots[name] = emb.proc.pid
    out = {}
    for name, pid in roots.items():
        p = psutil.Process(pid)
        out[name] = [p, *p.children(recursive=True)]
    return out


def _cpu_all(ps: list[psutil.Process]) -> float:
    total = 0.0
    for p in ps:
        try:
            total += _cpu(p)
        except psutil.NoSuchProcess:
            pass
    return total


async def _window(b: Bench, pp: psutil.Process, seconds: float) -> dict[str, Any]:
    """Poll worker CPU, RSS, Redis cmd/s, polls/s and the overdue queue over ``seconds``."""
    others = _others(b)
    o0 = {k: _cpu_all(v) for k, v in others.items()}
    c0, r0, g0, t0 = _cpu(pp), await _redis_cmds(b), (await _sim_stats(b))["gets"], time.monotonic()
    backlog = []
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1.0)
        backlog.append(int(await b.redis.zcount(keys.queue("poll"), "-inf", int(time.time() * 1000))))
    dt = time.monotonic() - t0
    c1, r1, g1 = _cpu(pp), await _redis_cmds(b), (await _sim_stats(b))["gets"]
    return {"seconds": round(dt, 1), "cpu_pct": round((c1 - c0) / dt * 100, 1),
            "rss_mib": round(pp.memory_info().rss / 2**20, 1), "redis_cmds_per_s": round((r1 - r0) / dt),
            "polls_per_s": round((g1 - g0) / dt, 1), "overdue_max": max(backlog, default=0),
            "overdue_mean": round(sum(backlog) / max(1, len(backlog))),
            "redis_used_mib": round(int((await b.redis.info("memory"))["used_memory"]) / 2**20, 1),
            "others_cpu_pct": {k: round((_cpu_all(v) - o0[k]) / dt * 100) for k, v in others.items()}}


async def _hook_jobs(b: Bench) -> dict[str, dict[str, Any]]:
    """arq results of webhook-triggered polls, by task job id."""
    out: dict[str, dict[str, Any]] = {}
    async for k in b.redis.scan_iter(match=keys.result_key_prefix + "*:hook:*", count=1000):
        raw = await b.redis.get(k)
        if raw is None:
            continue
        r = deserialize_result(raw, deserializer=loads)
        job_id = k.decode()[len(keys.result_key_prefix):].split(":hook:")[0]
        out[job_id] = {"enqueued": r.enqueue_time.timestamp(), "started": r.start_time.timestamp(),
                       "finished": r.finish_time.timestamp(),
                       "outcome": r.result.get("outcome") if isinstance(r.result, dict) else repr(r.result)}
    return out


async def _check_status(b: Bench, items: list[Any]) -> int:
    """How many of these /prediction-status reports as completed (concurrency 20)."""
    sem, ok = asyncio.Semaphore(20), 0
    async with httpx.AsyncClient(base_url=b.api, timeout=30) as c:
        async def one(s: Any) -> None:
            nonlocal ok
            async with sem:
                r = await c.get("/prediction-status", params={"job_id": s.job_id},
                                headers={"Authorization": f"Bearer {s.api_key}"})
                ok += r.status_code == 200 and r.json()["replicate_status"] == "completed"
        await asyncio.gather(*(one(s) for s in items))
    return ok


async def scenario(b: Bench, n: int, webhooks: bool, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"n": n, "mode": "webhooks" if webhooks else "polling only"}
    await b.reset()
    async with httpx.AsyncClient(base_url=b.sim, timeout=30) as c:
        await c.post("/_sim/config", json={"deliver": webhooks})
    t = time.monotonic()
    items = await seed(b, n, webhooks)
    res["seed_s"] = round(time.monotonic() - t, 1)
    poll = b.spawn("poll", [PY, "-m", "ingress.cli", "worker", "poll"])
    extra = [b.spawn(f"poll{i}", [PY, "-m", "ingress.cli", "worker", "poll"]) for i in range(2, a.poll_workers + 1)]
    res["poll_workers"] = 1 + len(extra)
    pp = psutil.Process(poll.pid)
    await asyncio.sleep(a.warmup)
    res["steady"] = await _window(b, pp, a.steady)
    m = min(a.finish, n)
    sample = items[:m]
    t0 = await finish_at(b, [s.provider_id for s in sample], a.rate)
    res["finishing"] = f"{m} of {n} at {a.rate:g}/s, the rest stay in flight"
    res["during_finish"] = await _window(b, pp, m / a.rate + 1.0)
    jids = [s.job_id for s in sample]
    deadline = time.time() + a.drain
    while (done := int(await b.db.fetchval("SELECT count(*) FROM tasks WHERE job_id = ANY($1::text[]) "
                                           "AND status = 'completed'", jids))) < m and time.time() < deadline:
        await asyncio.sleep(1.0)
    res["completed"] = done
    res["finish_window_s"] = round(time.time() - t0, 1)
    rows = {r["job_id"]: r["updated_at"].timestamp() for r in await b.db.fetch(
        "SELECT job_id, updated_at FROM tasks WHERE job_id = ANY($1::text[]) AND status = 'completed'", jids)}
    async with httpx.AsyncClient(base_url=b.sim, timeout=120) as c:
        fin = (await c.get("/_sim/finished")).json()
    res["sim"] = await _sim_stats(b)
    delays = [rows[s.job_id] - fin[s.provider_id]["finished_at"] for s in sample if s.job_id in rows]
    res["delay_s"] = summary(delays)
    if webhooks:
        hooks = await _hook_jobs(b)
        by = {s.job_id: fin[s.provider_id] for s in sample}
        deliv = [v["delivered_at"] - v["finished_at"] for v in by.values() if v.get("delivered_at")]
        res["webhook_delivered_s"] = summary(deliv)  # finish → the ingress answered (job enqueued)
        res["hook_queue_wait_s"] = summary([h["started"] - h["enqueued"] for h in hooks.values()])
        res["hook_run_s"] = summary([h["finished"] - h["started"] for h in hooks.values()])
        res["completed_by_webhook"] = sum(1 for j, h in hooks.items() if h["outcome"] == "completed" and j in by)
        res["hook_outcomes"] = sorted({str(h["outcome"]) for h in hooks.values()})[:5]
    res["status_completed"] = await _check_status(b, [s for s in sample if s.job_id in rows])
    res["poll_rss_end_mib"] = round(pp.memory_info().rss / 2**20, 1)
    b.stop_proc("poll")
    for i in range(2, a.poll_workers + 1):
        b.stop_proc(f"poll{i}")
    return res


def _wrk(url: str, keys_: list[str], conc: int, seconds: int) -> str:
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    body = json.dumps({"model": "bench/model", "input": {"prompt": "a cat", "sim": {"seconds": 600}}})
    lua.write_text("keys = {" + ",".join(f'"{k}"' for k in keys_) + "}\ni = 0\n"
                   "request = function()\n  i = i + 1\n  return wrk.format('POST', '/generate', "
                   "{['Authorization'] = 'Bearer ' .. keys[i % #keys + 1], ['Content-Type'] = "
                   f"'application/json'}}, [[{body}]])\nend\n")
    try:
        return subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                              capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        lua.unlink()


async def generate(b: Bench, a: argparse.Namespace) -> dict[str, Any]:
    """POST /generate at concurrency 50 over 50 accounts (one account's charges serialize on its row)."""
    await b.reset()
    b.spawn("media", [PY, "-m", "ingress.cli", "worker", "media"])
    b.spawn("poll", [PY, "-m", "ingress.cli", "worker", "poll"])
    await asyncio.sleep(3.0)
    t0 = datetime.now(UTC)
    out = await asyncio.to_thread(_wrk, f"{b.api}/generate", [x.api_key for x in b.accounts], 50,
                                  a.generate_seconds)
    res = _parse_wrk(out)
    running = await b.db.fetchval("SELECT count(*) FROM tasks WHERE created_at >= $1 AND status = 'running'", t0)
    res["created_at_provider_by_end"] = int(running)
    for name in ("media", "poll"):
        b.stop_proc(name)
    return res


def _parse_wrk(out: str) -> dict[str, Any]:
    import re

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        v, unit = float(m.group(1)), m.group(2)
        return round(v / 1000 if unit == "us" else v * 1000 if unit == "s" else v, 1)

    reqs = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert reqs and rps, out
    return {"requests": int(reqs.group(1)), "rps": float(rps.group(1)), "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def _emit(r: dict[str, Any]) -> None:
    print(json.dumps(r, default=str), flush=True)
    if path := os.environ.get("BENCH_JSON"):
        with open(path, "a") as f:
            f.write(json.dumps(r, default=str) + "\n")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--modes", default="webhooks,polling")
    ap.add_argument("--finish", type=int, default=1000, help="predictions that finish per run")
    ap.add_argument("--rate", type=float, default=20.0, help="finishes per second")
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--steady", type=float, default=20.0)
    ap.add_argument("--drain", type=float, default=90.0, help="how long to wait for stragglers")
    ap.add_argument("--poll-workers", type=int, default=1, help="poll workers per run (CPU/RSS: the first)")
    ap.add_argument("--generate-seconds", type=int, default=20, help="0: skip POST /generate")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="hard bound on the whole run")
    a = ap.parse_args()
    b = Bench()
    await b.start()
    snap = Path(".snap-commit")  # a `git archive` snapshot records the commit it was made from
    commit = snap.read_text().strip() if snap.exists() else subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    _emit({"date": datetime.now(UTC).isoformat(timespec="minutes"), "cores": os.cpu_count(),
           "python": sys.version.split()[0], "commit": commit, "args": vars(a)})
    try:
        async with asyncio.timeout(a.max_minutes * 60):
            await b.make_accounts(50, 1000.0)
            if a.generate_seconds:
                _emit({"generate": await generate(b, a)})
            for n in (int(x) for x in a.sizes.split(",") if x):
                for mode in a.modes.split(","):
                    _emit(await scenario(b, n, mode == "webhooks", a))
    finally:
        await b.stop()


if __name__ == "__main__":
    asyncio.run(main())
